fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo::rerun-if-changed=proto/peregrine.proto");
    tonic_prost_build::configure()
        .type_attribute(".peregrine.v1", "#[derive(serde::Serialize)]")
        .type_attribute(".peregrine.v1", "#[serde(rename_all = \"snake_case\")]")
        .btree_map(".peregrine.v1.Alert.fields")
        .btree_map(".peregrine.v1.AgentStatus.kernel_features")
        // Slices of the received buffer: the collector queues them without a copy per event.
        .bytes(".peregrine.v1.EventBatchRaw.events")
        .compile_protos(&["proto/peregrine.proto"], &["proto"])?;
    Ok(())
}
