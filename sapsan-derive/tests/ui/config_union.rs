use sapsan_core::ModelConfig;

#[derive(ModelConfig)]
union C {
    a: u32,
    b: f32,
}

fn main() {}
