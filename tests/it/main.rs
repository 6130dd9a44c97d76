//! All integration tests, built as one binary (see Cargo.toml `[[test]]`).

mod cli;
mod util;
