//! Imports `wasi:config/store@0.1.0`, a version no Portico host provides:
//! the host must refuse it at start, naming the versions it does provide.

wit_bindgen::generate!({
    inline: "
        package wasi:config@0.1.0;

        interface store {
            get: func(key: string) -> option<string>;
        }

        world old-config {
            import store;
        }
    ",
});

fn main() {
    println!("{:?}", wasi::config::store::get("greeting"));
}
