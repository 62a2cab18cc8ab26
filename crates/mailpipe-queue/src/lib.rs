//! Job sources and event sinks: Apache Kafka, and the in-process queue of the embedded default
