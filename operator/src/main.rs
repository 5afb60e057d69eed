fn main() {
    eprintln!("weir-operator: not implemented yet (pod CIDR allocation and CRDs arrive with a later issue)");
    std::process::exit(64);
}
