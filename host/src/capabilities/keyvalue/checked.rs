//! The key-value calls whose arguments the host checks in the plugin's
//! memory before it copies them (see [`add_to_linker`]).

use wasmtime::component::{Linker, Resource, WasmList, WasmStr};
use wasmtime::{AsContext, Result, StoreContextMut};

use super::host::KeyValueView;
use super::{KvError, MAX_BATCH, OpenBucket, check_key_size, check_value_size, too_many_keys};

/// Replaces the key-value calls that take keys and values with ones that
/// check each one's size before copying it out of the plugin's memory, and
/// copy a value in one go. The generated bindings copy whole lists first,
/// and a list's entries may all point at the same large string in the
/// plugin's memory: a small call could make the host copy terabytes. (They
/// also lift a `list<u8>` element by element, which kept a worker thread
/// busy for milliseconds per MiB.)
pub(super) fn add_to_linker<T: KeyValueView>(linker: &mut Linker<T>) -> Result<()> {
    linker.allow_shadowing(true);
    check_set(linker)?;
    check_batches(linker)?;
    linker.allow_shadowing(false);
    Ok(())
}

/// `bucket.set`, which checks its key and value before copying them.
fn check_set<T: KeyValueView>(linker: &mut Linker<T>) -> Result<()> {
    linker.instance(KEYVALUE_STORE_INTERFACE)?.func_wrap_async(
        "[method]bucket.set",
        |mut store, (bucket, key, value): (Resource<OpenBucket>, WasmStr, WasmList<u8>)| {
            Box::new(async move {
                let key = match checked_key(&store, &key)? {
                    Ok(key) => key,
                    Err(error) => return Ok((store.data_mut().keyvalue().answer(Err(error)),)),
                };
                if let Err(error) = check_value_size(value.len()) {
                    return Ok((store.data_mut().keyvalue().answer(Err(error)),));
                }
                let value = value.as_le_slice(&store).to_vec();
                let bucket = store.data_mut().keyvalue().bucket(&bucket)?;
                let set = bucket.set(&key, value).await;
                Ok((store.data_mut().keyvalue().answer(set),))
            })
        },
    )?;
    Ok(())
}

/// The batch calls, which check the list's length before reading it, and
/// each key and value before copying it.
fn check_batches<T: KeyValueView>(linker: &mut Linker<T>) -> Result<()> {
    let mut batch = linker.instance(KEYVALUE_BATCH_INTERFACE)?;
    batch.func_wrap_async(
        "set-many",
        |mut store,
         (bucket, entries): (Resource<OpenBucket>, WasmList<(WasmStr, WasmList<u8>)>)| {
            Box::new(async move {
                if entries.len() > MAX_BATCH {
                    return Ok((store.data_mut().keyvalue().answer(Err(too_many_keys())),));
                }
                let entries: Vec<(WasmStr, WasmList<u8>)> =
                    entries.iter(&mut store)?.collect::<Result<_>>()?;
                let mut keys = Vec::with_capacity(entries.len());
                for (key, value) in &entries {
                    let key = match checked_key(&store, key)? {
                        Ok(key) => key,
                        Err(error) => return Ok((store.data_mut().keyvalue().answer(Err(error)),)),
                    };
                    if let Err(error) = check_value_size(value.len()) {
                        return Ok((store.data_mut().keyvalue().answer(Err(error)),));
                    }
                    keys.push(key);
                }
                let bucket = store.data_mut().keyvalue().bucket(&bucket)?;
                for (key, (_, value)) in keys.into_iter().zip(entries) {
                    let value = value.as_le_slice(&store).to_vec();
                    if let Err(error) = bucket.set(&key, value).await {
                        return Ok((store.data_mut().keyvalue().answer(Err(error)),));
                    }
                }
                Ok((Ok(()),))
            })
        },
    )?;
    batch.func_wrap_async(
        "get-many",
        |mut store, (bucket, keys): (Resource<OpenBucket>, WasmList<WasmStr>)| {
            Box::new(async move {
                let keys = match checked_keys(&mut store, keys)? {
                    Ok(keys) => keys,
                    Err(error) => return Ok((store.data_mut().keyvalue().answer(Err(error)),)),
                };
                let bucket = store.data_mut().keyvalue().bucket(&bucket)?;
                let values = bucket.get_many(keys).await;
                Ok((store.data_mut().keyvalue().answer(values),))
            })
        },
    )?;
    batch.func_wrap_async(
        "delete-many",
        |mut store, (bucket, keys): (Resource<OpenBucket>, WasmList<WasmStr>)| {
            Box::new(async move {
                let keys = match checked_keys(&mut store, keys)? {
                    Ok(keys) => keys,
                    Err(error) => return Ok((store.data_mut().keyvalue().answer(Err(error)),)),
                };
                let bucket = store.data_mut().keyvalue().bucket(&bucket)?;
                for key in keys {
                    if let Err(error) = bucket.delete(&key).await {
                        return Ok((store.data_mut().keyvalue().answer(Err(error)),));
                    }
                }
                Ok((Ok(()),))
            })
        },
    )?;
    Ok(())
}

/// The keys of a batch call, copied once the list's length and each key's
/// size are checked; a trap stays a trap.
fn checked_keys<T: 'static>(
    store: &mut StoreContextMut<'_, T>,
    keys: WasmList<WasmStr>,
) -> Result<std::result::Result<Vec<String>, KvError>> {
    if keys.len() > MAX_BATCH {
        return Ok(Err(too_many_keys()));
    }
    let keys: Vec<WasmStr> = keys.iter(&mut *store)?.collect::<Result<_>>()?;
    let mut checked = Vec::with_capacity(keys.len());
    for key in &keys {
        match checked_key(&*store, key)? {
            Ok(key) => checked.push(key),
            Err(error) => return Ok(Err(error)),
        }
    }
    Ok(Ok(checked))
}

/// A key, copied out of the plugin's memory if it is not too long. (The
/// text is checked in place, so the first key over the limit ends the
/// call before anything large is copied.)
fn checked_key<T: 'static>(
    store: impl AsContext<Data = T>,
    key: &WasmStr,
) -> Result<std::result::Result<String, KvError>> {
    let text = key.to_str(&store)?;
    Ok(check_key_size(text.len()).map(|()| text.into_owned()))
}

const KEYVALUE_STORE_INTERFACE: &str = "wasi:keyvalue/store@0.2.0-draft";
const KEYVALUE_BATCH_INTERFACE: &str = "wasi:keyvalue/batch@0.2.0-draft";
