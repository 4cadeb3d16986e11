use sapsan_core::tracked;
use sapsan_core::tracking::FakeBackend;

#[tracked(train)]
async fn train(backend: &FakeBackend) {}

fn main() {}
