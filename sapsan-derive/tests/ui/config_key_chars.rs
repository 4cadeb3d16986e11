use sapsan_core::ModelConfig;

#[derive(ModelConfig)]
struct C {
    #[sapsan(rename = "a//b")]
    double_slash: u32,
    #[sapsan(rename = "acc@1")]
    at: u32,
    #[sapsan(rename = "a,b")]
    comma: u32,
    #[sapsan(rename = "f(x)")]
    paren: u32,
    #[sapsan(rename = "kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk")]
    too_long: u32,
}

fn main() {}
