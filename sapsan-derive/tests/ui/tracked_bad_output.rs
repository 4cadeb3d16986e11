use sapsan_core::tracked;
use sapsan_core::tracking::FakeBackend;

/// An error type that cannot carry a tracking error.
#[derive(Debug)]
struct TrainError;

impl std::fmt::Display for TrainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("training failed")
    }
}

#[tracked(train)]
fn train(backend: &FakeBackend) -> Result<(), TrainError> {
    Ok(())
}

fn main() {}
