//! The plugin's settings (`--config KEY=VALUE`, or a service's
//! `settings` table), read through `wasi:config/store`: at 0.2.0-rc.1, as
//! wasmtime-wasi-config answers it, and at the name Spin's toolchains
//! import.

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::component::{HasData, Linker};
use wasmtime_wasi_config::{WasiConfig, WasiConfigVariables};

use self::spin::wasi::config::store::{self as spin_store, Error};

/// A service's settings, shared by its connections, in the two forms the
/// two versions of the interface read.
#[derive(Clone)]
pub struct SettingsCtx {
    variables: Arc<WasiConfigVariables>,
    settings: Arc<BTreeMap<String, String>>,
}

impl SettingsCtx {
    pub fn new(settings: &BTreeMap<String, String>) -> Self {
        Self {
            variables: Arc::new(settings.clone().into_iter().collect()),
            settings: Arc::new(settings.clone()),
        }
    }

    /// The settings, by name.
    pub fn settings(&self) -> &BTreeMap<String, String> {
        &self.settings
    }
}

/// Implemented once by the store's data, to reach the settings.
pub trait SettingsView: Send + 'static {
    fn settings(&mut self) -> &SettingsCtx;
}

struct HasSettings;

impl HasData for HasSettings {
    type Data<'a> = &'a SettingsCtx;
}

/// Links both versions of `wasi:config/store` for stores whose data
/// reaches a [`SettingsCtx`].
pub fn add_to_linker<T: SettingsView>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wasmtime_wasi_config::add_to_linker(linker, |state: &mut T| {
        WasiConfig::from(&*state.settings().variables)
    })?;
    spin_store::add_to_linker::<T, HasSettings>(linker, T::settings)
}

/// `wasi:config` as Spin's toolchains import it (0.2.0-draft-2024-09-27),
/// beside the 0.2.0-rc.1 that wasmtime-wasi-config provides: the same
/// interface under an earlier name (pre-release versions never match each
/// other), answered from the same settings, so that a plugin written for
/// Spin's config interface loads unchanged.
mod spin {
    wasmtime::component::bindgen!({
        inline: "
            package wasi:config@0.2.0-draft-2024-09-27;

            interface store {
                variant error { upstream(string), io(string) }
                get: func(key: string) -> result<option<string>, error>;
                get-all: func() -> result<list<tuple<string, string>>, error>;
            }

            world imports {
                import store;
            }
        ",
    });
}

impl spin_store::Host for &SettingsCtx {
    fn get(&mut self, key: String) -> Result<Option<String>, Error> {
        Ok(self.settings.get(&key).cloned())
    }

    fn get_all(&mut self) -> Result<Vec<(String, String)>, Error> {
        Ok(self
            .settings
            .iter()
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect())
    }
}
