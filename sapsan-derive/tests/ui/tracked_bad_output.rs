use sapsan_core::tracked;
use sapsan_core::tracking::FakeBackend;

#[tracked(train)]
fn train(backend: &FakeBackend) -> Result<(), String> {
    Ok(())
}

fn main() {}
