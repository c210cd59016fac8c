//! The bundled example: a bank-account write handler (`regent example-handler`) used by the quick start, and
//! helpers to pack its messages into `Any`.

pub mod bank;
