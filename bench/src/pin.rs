//! Where the load generator runs. Sharing the cores with the server under
//! test, a saturated client caps every server alike and pushes each ratio
//! toward 1; pinned, the server has a core of its own and the client the
//! other, and the client's own CPU share shows whether it kept up.

use std::io;

/// A placement of server and client on the machine's cores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Layout {
    /// Everything shares every core, as the scheduler likes.
    Shared,
    /// The server on core `server`, the load generator on core `client`.
    Pinned { server: usize, client: usize },
}

impl Layout {
    /// The layouts this machine allows: pinned needs two cores.
    pub fn all() -> Vec<Layout> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut layouts = vec![Layout::Shared];
        if cores >= 2 {
            layouts.push(Layout::Pinned {
                server: 0,
                client: cores - 1,
            });
        }
        layouts
    }

    pub fn server_cpu(self) -> Option<usize> {
        match self {
            Layout::Shared => None,
            Layout::Pinned { server, .. } => Some(server),
        }
    }

    pub fn name(self) -> String {
        match self {
            Layout::Shared => "shared cores".into(),
            Layout::Pinned { server, client } => {
                format!("server pinned to CPU {server}, load generator to CPU {client}")
            }
        }
    }

    /// A runtime for the load generator: on the client's core alone (one
    /// worker, and any thread it starts, which inherits the mask), or on
    /// every core.
    pub fn client_runtime(self) -> io::Result<tokio::runtime::Runtime> {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.enable_all();
        if let Layout::Pinned { client, .. } = self {
            builder.worker_threads(1).on_thread_start(move || {
                // A thread left unpinned only makes the figures less clean;
                // the client's CPU share still shows it.
                let _ = pin_current_thread(Some(client));
            });
        }
        builder.build()
    }
}

/// Restricts the calling thread (and threads it starts later) to `cpu`, or
/// lets it run anywhere again with `None`.
pub fn pin_current_thread(cpu: Option<usize>) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity reads the set it
    // is given and affects only the calling thread (pid 0).
    unsafe {
        let mut set = std::mem::zeroed::<libc::cpu_set_t>();
        match cpu {
            Some(cpu) => libc::CPU_SET(cpu, &mut set),
            None => (0..libc::CPU_SETSIZE as usize).for_each(|cpu| libc::CPU_SET(cpu, &mut set)),
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
