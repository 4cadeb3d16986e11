use sapsan_core::tracked;
use sapsan_core::tracking::FakeBackend;

#[tracked(train, companion = "train_run")]
fn train(backend: &FakeBackend) {}

#[tracked(train, companion = true)]
fn train_again(backend: &FakeBackend) {}

fn main() {}
