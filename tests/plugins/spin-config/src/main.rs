//! Reads its settings through `wasi:config/store@0.2.0-draft-2024-09-27`,
//! the version Spin's toolchains import, and writes them to its client.

wit_bindgen::generate!({
    inline: "
        package wasi:config@0.2.0-draft-2024-09-27;

        interface store {
            variant error { upstream(string), io(string) }
            get: func(key: string) -> result<option<string>, error>;
            get-all: func() -> result<list<tuple<string, string>>, error>;
        }

        world spin-config {
            import store;
        }
    ",
});

use wasi::config::store;

fn main() {
    match store::get("greeting") {
        Ok(Some(greeting)) => println!("greeting: {greeting}"),
        Ok(None) => println!("no greeting"),
        Err(_) => println!("error"),
    }
    if let Ok(all) = store::get_all() {
        println!("settings: {}", all.len());
    }
}
