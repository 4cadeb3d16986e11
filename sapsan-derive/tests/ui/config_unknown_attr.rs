use sapsan_core::ModelConfig;

#[derive(ModelConfig)]
#[sapsan(prefx = "data")]
struct C {
    #[sapsan(renam = "x")]
    a: u32,
    #[sapsan(prefix = "data")]
    b: u32,
}

fn main() {}
