use sapsan_core::tracked;

#[tracked(train)]
struct Train {
    epochs: u32,
}

fn main() {}
