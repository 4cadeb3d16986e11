use sapsan_core::ModelConfig;

struct Device;

#[derive(ModelConfig)]
struct C {
    device: Device,
}

fn main() {}
