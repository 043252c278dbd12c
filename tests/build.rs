fn main() {
    conclave_torch_link::link_libtorch();
}
