use sapsan_core::ModelConfig;

#[derive(ModelConfig)]
#[sapsan(prefix = "/data")]
struct C {
    size: u32,
}

fn main() {}
