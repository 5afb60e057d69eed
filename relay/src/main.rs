fn main() {
    eprintln!("weir-relay: not implemented yet (flow aggregation arrives with the observability issue)");
    std::process::exit(64);
}
