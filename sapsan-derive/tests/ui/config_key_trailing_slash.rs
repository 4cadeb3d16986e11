use sapsan_core::ModelConfig;

#[derive(ModelConfig)]
struct C {
    #[sapsan(rename = "size/")]
    size: u32,
}

fn main() {}
