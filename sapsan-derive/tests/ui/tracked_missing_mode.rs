use sapsan_core::tracked;
use sapsan_core::tracking::FakeBackend;

#[tracked(name = "x")]
fn train(backend: &FakeBackend) {}

fn main() {}
