//! Alerts and the folding stage.
//!
//! Folding keeps a noisy rule from flooding the SIEM: the first alert of a (rule, container)
//! goes out at once; repeats within the window are counted, and one follow-up alert carrying the
//! count goes out when the window closes. Time is passed in (`now`), never read from a clock,
//! so the behaviour is testable without sleeping.

use std::collections::HashMap;
use std::sync::Arc;

/// Falco's priorities, most severe first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// EMERGENCY
    Emergency,
    /// ALERT
    Alert,
    /// CRITICAL
    Critical,
    /// ERROR
    Error,
    /// WARNING
    Warning,
    /// NOTICE
    Notice,
    /// INFORMATIONAL (INFO)
    Informational,
    /// DEBUG
    Debug,
}

impl Priority {
    /// Case-insensitive, as Falco (`INFO` and `INFORMATIONAL` are the same).
    pub fn parse(s: &str) -> Option<Priority> {
        Some(match s.to_ascii_lowercase().as_str() {
            "emergency" => Priority::Emergency,
            "alert" => Priority::Alert,
            "critical" => Priority::Critical,
            "error" => Priority::Error,
            "warning" => Priority::Warning,
            "notice" => Priority::Notice,
            "informational" | "info" => Priority::Informational,
            "debug" => Priority::Debug,
            _ => return None,
        })
    }

    /// Falco's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Priority::Emergency => "Emergency",
            Priority::Alert => "Alert",
            Priority::Critical => "Critical",
            Priority::Error => "Error",
            Priority::Warning => "Warning",
            Priority::Notice => "Notice",
            Priority::Informational => "Informational",
            Priority::Debug => "Debug",
        }
    }
}

/// One rule firing on one event (or, folded, on several).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    /// The rule's name.
    pub rule: Arc<str>,
    /// The rule's priority.
    pub priority: Priority,
    /// The rule's tags.
    pub tags: Arc<[String]>,
    /// The rule's output with `%field`s substituted (`<NA>` for missing values).
    pub output: String,
    /// Every field the output references, with its rendered value: the event's context.
    pub fields: Vec<(String, String)>,
    /// `container.id` of the event (`host` on the host; empty when unknown): the folding key.
    pub container_id: String,
    /// Caller's time of the event (nanoseconds; whatever clock the caller uses for folding).
    pub time: u64,
    /// 1 for an alert sent as it happened; for a folded follow-up, how many repeats it stands for.
    pub count: u64,
    /// True for the follow-up alert summarising repeats.
    pub folded: bool,
}

/// Folding settings.
#[derive(Clone, Copy, Debug)]
pub struct FoldConfig {
    /// Window length, in the unit of `now` (nanoseconds when fed event times).
    pub window: u64,
    /// At most this many (rule, container) keys are tracked; beyond, alerts pass unfolded.
    pub max_keys: usize,
}

impl Default for FoldConfig {
    fn default() -> Self {
        FoldConfig {
            window: 60_000_000_000,
            max_keys: 10_000,
        }
    }
}

struct Window {
    ends: u64,
    repeats: u64,
    /// The latest repeat, sent as the follow-up's body.
    last: Option<Alert>,
}

/// The folding stage.
pub struct Folder {
    cfg: FoldConfig,
    open: HashMap<(Arc<str>, String), Window>,
}

impl Folder {
    /// A folder with these settings.
    pub fn new(cfg: FoldConfig) -> Folder {
        Folder {
            cfg,
            open: HashMap::new(),
        }
    }

    /// Offers an alert at time `now`; what must go out now is appended to `out`.
    pub fn offer(&mut self, alert: Alert, now: u64, out: &mut Vec<Alert>) {
        self.flush(now, out);
        let key = (alert.rule.clone(), alert.container_id.clone());
        if let Some(w) = self.open.get_mut(&key) {
            w.repeats += 1;
            w.last = Some(alert);
            return;
        }
        if self.open.len() < self.cfg.max_keys {
            self.open.insert(
                key,
                Window {
                    ends: now.saturating_add(self.cfg.window),
                    repeats: 0,
                    last: None,
                },
            );
        }
        out.push(alert);
    }

    /// Closes the windows that ended at or before `now`: each with repeats yields a follow-up
    /// and stays open for another window (so a steady stream gives one alert per window); one
    /// without repeats is forgotten.
    pub fn flush(&mut self, now: u64, out: &mut Vec<Alert>) {
        let window = self.cfg.window;
        let mut closed = Vec::new();
        self.open.retain(|_, w| {
            if w.ends > now {
                return true;
            }
            if w.repeats == 0 {
                return false;
            }
            if let Some(mut a) = w.last.take() {
                a.count = w.repeats;
                a.folded = true;
                closed.push(a);
            }
            w.repeats = 0;
            w.ends = now.saturating_add(window);
            true
        });
        // HashMap order is arbitrary: emit in a stable order.
        closed.sort_by(|a, b| {
            (a.time, &a.rule, &a.container_id).cmp(&(b.time, &b.rule, &b.container_id))
        });
        out.extend(closed);
    }

    /// Sends every pending follow-up now (shutdown).
    pub fn drain(&mut self, out: &mut Vec<Alert>) {
        self.flush(u64::MAX, out);
        self.open.clear();
    }

    /// How many (rule, container) windows are open.
    pub fn open_windows(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(rule: &str, container: &str, time: u64) -> Alert {
        Alert {
            rule: rule.into(),
            priority: Priority::Warning,
            tags: Arc::from(Vec::new()),
            output: format!("{rule} at {time}"),
            fields: Vec::new(),
            container_id: container.into(),
            time,
            count: 1,
            folded: false,
        }
    }

    #[test]
    fn first_goes_out_repeats_fold_into_one_follow_up() {
        let mut f = Folder::new(FoldConfig {
            window: 10,
            max_keys: 100,
        });
        let mut out = Vec::new();
        f.offer(alert("r", "c1", 0), 0, &mut out);
        assert_eq!(out.len(), 1);
        assert!(!out[0].folded);
        for t in 1..5 {
            f.offer(alert("r", "c1", t), t, &mut out);
        }
        // Another container is another key.
        f.offer(alert("r", "c2", 5), 5, &mut out);
        assert_eq!(out.len(), 2);
        f.flush(9, &mut out);
        assert_eq!(out.len(), 2);
        f.flush(10, &mut out);
        assert_eq!(out.len(), 3);
        assert!(out[2].folded);
        assert_eq!(out[2].count, 4);
        assert_eq!(out[2].time, 4);
        // c2 had no repeats: its window closes silently at 15.
        f.flush(15, &mut out);
        assert_eq!(out.len(), 3);
        // c1's window was renewed at 10; no repeats since, so it closes at 20, and a new alert
        // after that goes out at once.
        f.flush(20, &mut out);
        assert_eq!(f.open_windows(), 0);
        f.offer(alert("r", "c1", 21), 21, &mut out);
        assert_eq!(out.len(), 4);
        assert!(!out[3].folded);
    }

    #[test]
    fn repeats_after_the_window_closed_are_flushed_first() {
        let mut f = Folder::new(FoldConfig {
            window: 10,
            max_keys: 100,
        });
        let mut out = Vec::new();
        f.offer(alert("r", "c", 0), 0, &mut out);
        f.offer(alert("r", "c", 3), 3, &mut out);
        f.offer(alert("r", "c", 30), 30, &mut out);
        // The follow-up for the first window, then the new one (counted in the renewed window).
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].count, 1);
        assert!(out[1].folded);
        let mut rest = Vec::new();
        f.drain(&mut rest);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].time, 30);
    }

    #[test]
    fn key_limit_passes_alerts_through() {
        let mut f = Folder::new(FoldConfig {
            window: 10,
            max_keys: 1,
        });
        let mut out = Vec::new();
        f.offer(alert("a", "c", 0), 0, &mut out);
        f.offer(alert("b", "c", 0), 0, &mut out);
        f.offer(alert("b", "c", 1), 1, &mut out);
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn priorities() {
        assert_eq!(Priority::parse("info"), Some(Priority::Informational));
        assert_eq!(Priority::parse("WARNING"), Some(Priority::Warning));
        assert_eq!(Priority::parse("warn"), None);
        assert!(Priority::Critical < Priority::Notice);
    }
}
