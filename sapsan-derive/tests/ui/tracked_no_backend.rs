use sapsan_core::tracked;

#[tracked(train)]
fn train(epochs: u32) {}

fn main() {
    train(1); // no cascade: the function is still there
}
