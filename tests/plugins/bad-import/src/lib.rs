//! A component that exports `run` but also imports a function no Portico
//! host provides: the host must refuse it at start, naming the import.

wit_bindgen::generate!({
    inline: "
        package portico:bad-import;

        world plugin {
            import launch-missiles: func();
            export run: func();
        }
    ",
});

struct BadImport;

impl Guest for BadImport {
    fn run() {
        launch_missiles();
    }
}

export!(BadImport);
