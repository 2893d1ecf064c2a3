//! Fitting one event into an output's size limit (`max_event_bytes`), by documented rules:
//!
//! 1. argv of the event's process is cut to its longest prefix (in bytes) that fits: the last
//!    elements go first, and the element crossing the limit is cut at a character boundary;
//! 2. if argv emptied is not enough: the ancestors' argv, each cut to the same byte budget;
//! 3. then an alert's output text and field values, each cut to the same byte budget;
//! 4. if it still does not fit, the event is set aside (dead letter, reason `too_large`).
//!
//! A truncated event says so: `collector_truncated` is added to its process's `partial` list
//! (or, for an alert without a process, to its fields as `collector.truncated=true`), and the
//! output's `events_truncated` counter goes up.

use peregrine_proto::{Event, Kind};


pub const FLAG: &str = "collector_truncated";

pub enum Fitted<T> {
    /// Fits as it is, or after truncation (`true`).
    Fits(T, bool),
    /// Cannot be made to fit: the reason, for the dead-letter record.
    TooLarge(String),
}

/// Encodes `event`, truncating it until its encoding is at most `limit` bytes.
///
/// Each step finds, by bisection on the encoded size, the largest byte budget that fits: the
/// same value can appear more than once in an encoding (argv is in a row's command line and in
/// its argv column), so budgets are measured, not computed.
pub fn fit<T, E: std::fmt::Display>(
    event: &Event,
    limit: Option<usize>,
    encode: impl Fn(&Event) -> Result<T, E>,
    size: impl Fn(&T) -> usize,
) -> Result<Fitted<T>, E> {
    let first = encode(event)?;
    let Some(limit) = limit else { return Ok(Fitted::Fits(first, false)) };
    let original = size(&first);
    if original <= limit {
        return Ok(Fitted::Fits(first, false));
    }
    let mut e = event.clone();
    flag(&mut e);
    type Step = (fn(&Event) -> usize, fn(&mut Event, usize));
    let steps: [Step; 3] = [(argv_total, argv_cut), (ancestors_total, ancestors_cut), (alert_total, alert_cut)];
    let mut last = original;
    for (total, cut) in steps {
        let hi = total(&e);
        if hi == 0 {
            continue;
        }
        let trial = |b: usize| -> Result<(Event, T, usize), E> {
            let mut t = e.clone();
            cut(&mut t, b);
            let enc = encode(&t)?;
            let n = size(&enc);
            Ok((t, enc, n))
        };
        let (t0, enc0, n0) = trial(0)?;
        if n0 > limit {
            // Even all of it gone is not enough: take it all and go on to the next step.
            e = t0;
            last = n0;
            continue;
        }
        // Largest budget in [0, hi) that fits (hi itself did not, or we would not be here).
        let (mut lo, mut hi_b) = (0usize, hi);
        let mut best = (t0, enc0);
        while hi_b - lo > 1 {
            let mid = lo + (hi_b - lo) / 2;
            let (t, enc, n) = trial(mid)?;
            if n <= limit {
                lo = mid;
                best = (t, enc);
            } else {
                hi_b = mid;
            }
        }
        return Ok(Fitted::Fits(best.1, true));
    }
    Ok(Fitted::TooLarge(format!("encoded event is {original} bytes, {last} after truncation; the limit is {limit}")))
}

fn flag(e: &mut Event) {
    if let Some(p) = e.process_mut() {
        if !p.partial.iter().any(|f| f == FLAG) {
            p.partial.push(FLAG.into());
        }
    } else if let Some(Kind::Alert(a)) = &mut e.kind {
        a.fields.insert("collector.truncated".into(), "true".into());
    }
}

fn bytes(argv: &[String]) -> usize {
    argv.iter().map(String::len).sum()
}

/// Keeps the longest prefix of argv within `budget` bytes (the element crossing it is cut at a
/// character boundary; the ones after it are dropped).
fn cut_to(argv: &mut Vec<String>, budget: usize) {
    let mut used = 0;
    let mut keep = 0;
    for a in argv.iter_mut() {
        if used + a.len() <= budget {
            used += a.len();
            keep += 1;
            continue;
        }
        let room = floor_char_boundary(a, budget - used);
        a.truncate(room);
        keep += 1;
        break;
    }
    argv.truncate(keep);
}

fn argv_total(e: &Event) -> usize {
    e.process().map_or(0, |p| bytes(&p.argv))
}

fn argv_cut(e: &mut Event, budget: usize) {
    if let Some(p) = e.process_mut() {
        cut_to(&mut p.argv, budget);
    }
}

fn ancestors_total(e: &Event) -> usize {
    match &e.kind {
        Some(Kind::Exec(x)) => x.ancestors.iter().map(|a| bytes(&a.argv)).max().unwrap_or(0),
        _ => 0,
    }
}

fn ancestors_cut(e: &mut Event, budget: usize) {
    if let Some(Kind::Exec(x)) = &mut e.kind {
        for a in &mut x.ancestors {
            cut_to(&mut a.argv, budget);
        }
    }
}

fn alert_total(e: &Event) -> usize {
    match &e.kind {
        Some(Kind::Alert(a)) => a.fields.values().map(String::len).chain([a.output.len()]).max().unwrap_or(0),
        _ => 0,
    }
}

fn alert_cut(e: &mut Event, budget: usize) {
    if let Some(Kind::Alert(a)) = &mut e.kind {
        for s in std::iter::once(&mut a.output).chain(a.fields.values_mut()) {
            let keep = floor_char_boundary(s, budget);
            s.truncate(keep);
        }
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use peregrine_proto::{Process, ProcessExec};

    fn exec_with_argv(argv: Vec<String>) -> Event {
        Event {
            id: "e1".into(),
            kind: Some(Kind::Exec(ProcessExec { process: Some(Process { argv, ..Default::default() }.into()), ancestors: vec![] })),
            ..Default::default()
        }
    }

    fn json(e: &Event) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(e)
    }

    #[test]
    fn big_argv_is_cut_from_the_end_and_flagged() {
        let e = exec_with_argv(vec!["/bin/echo".into(), "é".repeat(400_000), "tail".into()]);
        let Fitted::Fits(bytes, truncated) = fit(&e, Some(100_000), json, Vec::len).unwrap() else { panic!("too large") };
        assert!(truncated);
        assert!(bytes.len() <= 100_000);
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let p = &v["kind"]["exec"]["process"];
        assert_eq!(p["argv"][0], "/bin/echo");
        assert_eq!(p["argv"].as_array().unwrap().len(), 2, "the last element went first");
        assert!(p["argv"][1].as_str().unwrap().chars().all(|c| c == 'é'));
        assert_eq!(p["partial"], serde_json::json!([FLAG]));
    }

    #[test]
    fn small_events_are_untouched_and_hopeless_ones_refused() {
        let e = exec_with_argv(vec!["ls".into()]);
        assert!(matches!(fit(&e, Some(10_000), json, Vec::len).unwrap(), Fitted::Fits(_, false)));
        assert!(matches!(fit(&e, Some(20), json, Vec::len).unwrap(), Fitted::TooLarge(_)));
    }
}
