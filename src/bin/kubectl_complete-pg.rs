//! `kubectl_complete-pg`: the executable kubectl (1.26+) runs to complete `kubectl pg …`.
//! It receives the words after `kubectl pg`, the last one being the word to complete.

fn main() {
    let words: Vec<String> = std::env::args().skip(1).collect();
    kubectl_pg::output::emit(&kubectl_pg::complete(&words));
}
