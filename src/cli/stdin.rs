//! Sources for `backup --stdin`: a tar stream becomes a tree of real nodes, anything else one
//! file; `--stdin-from-command` runs a producer whose failure must prevent the snapshot.

use std::io::{self, Read};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use snapback_stream::entry::{Entry, EntryKind, EntrySource, Metadata, Timestamp, Warning};
use snapback_stream::{looks_like_tar, TarSource};

/// How to interpret the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdinMode {
    /// Detect a tar stream from its first header.
    Auto,
    /// Always a tar stream.
    Tar,
    /// Always one file (restic's behaviour).
    Raw,
}

/// Builds the entry source for a stream. `name` is the file name of a raw stream.
pub fn source(
    mut input: Box<dyn Read + Send>,
    mode: StdinMode,
    name: &str,
) -> anyhow::Result<(Box<dyn EntrySource + Send>, bool)> {
    let mut head = vec![0u8; 512];
    let n = read_full(&mut input, &mut head).context("reading the stream")?;
    head.truncate(n);
    let is_tar = match mode {
        StdinMode::Tar => true,
        StdinMode::Raw => false,
        StdinMode::Auto => n == 512 && looks_like_tar(&head),
    };
    let reader: Box<dyn Read + Send> = Box::new(io::Cursor::new(head).chain(input));
    if is_tar {
        Ok((Box::new(TarSource::new(reader)), true))
    } else {
        Ok((Box::new(SingleFile::new(name, reader)), false))
    }
}

/// Bytes of pipe buffer asked for (Linux's default is 64 KiB; 1 MiB is the unprivileged limit
/// unless `/proc/sys/fs/pipe-max-size` says otherwise).
const PIPE_BYTES: libc::c_int = 1 << 20;

/// Enlarges the kernel buffer of the pipe `fd` reads from, if it is a pipe. With the default
/// 64 KiB a producer writing `tar`'s 10 KiB records and our 512 KiB reads ping-pong through
/// a wake-up per record; a larger buffer lets each side run for a whole read. Best effort: a
/// file, a terminal or a refused size leaves everything as it was.
pub fn widen_pipe(fd: &impl std::os::fd::AsRawFd) {
    #[cfg(target_os = "linux")]
    {
        let fd = fd.as_raw_fd();
        // SAFETY: fcntl on a descriptor we hold; F_SETPIPE_SZ fails harmlessly (EBADF/EINVAL/
        // EPERM) on anything that is not a pipe or when the size is refused.
        let _ = unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, PIPE_BYTES) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = fd;
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A stream of unknown length as a single regular file.
pub struct SingleFile {
    name: PathBuf,
    reader: Box<dyn Read + Send>,
    done: bool,
}

impl SingleFile {
    /// The file `name` whose content is everything `reader` yields.
    pub fn new(name: &str, reader: Box<dyn Read + Send>) -> Self {
        SingleFile {
            name: PathBuf::from(name.trim_start_matches('/')),
            reader,
            done: false,
        }
    }
}

impl EntrySource for SingleFile {
    fn next_entry(&mut self) -> Result<Option<Entry<'_>>, snapback_stream::Error> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        let now = chrono::Utc::now();
        let (uid, gid) = snapback_repo::host::ids();
        let meta = Metadata {
            mode: 0o644,
            uid,
            gid,
            mtime: Timestamp {
                secs: now.timestamp(),
                nanos: now.timestamp_subsec_nanos(),
            },
            ..Metadata::default()
        };
        // The size is unknown until the end; the archiver records what it read.
        Ok(Some(Entry {
            path: self.name.clone(),
            kind: EntryKind::File,
            meta,
            data: Some(self.reader.as_mut()),
        }))
    }

    fn warnings(&self) -> &[Warning] {
        &[]
    }
}

/// The standard output of a producer command, shared between the reader handed to the source
/// and the [`CommandGate`] that checks the command's exit status at the end.
#[derive(Clone)]
pub struct CommandPipe {
    inner: Arc<Mutex<(Child, Option<ChildStdout>)>>,
    program: String,
}

impl CommandPipe {
    /// Starts `argv` with its stdout piped (stdin closed, stderr passed through).
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(argv: &[S]) -> anyhow::Result<Self> {
        let (program, args) = argv
            .split_first()
            .context("--stdin-from-command needs a command")?;
        let program = program.as_ref().to_string_lossy().into_owned();
        let mut command = Command::new(argv[0].as_ref());
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        // The producer needs none of our secrets.
        for var in snapback_sidecar::gate::SECRET_VARS {
            command.env_remove(var);
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {program}"))?;
        let stdout = child.stdout.take();
        if let Some(out) = &stdout {
            widen_pipe(out);
        }
        Ok(CommandPipe {
            inner: Arc::new(Mutex::new((child, stdout))),
            program,
        })
    }

    /// Reads the rest of the output and waits for the command; an error unless it exited 0.
    fn finish(&self) -> io::Result<()> {
        let mut guard = self
            .inner
            .lock()
            .map_err(|_| io::Error::other("command state poisoned"))?;
        if let Some(mut out) = guard.1.take() {
            io::copy(&mut out, &mut io::sink())?;
        }
        let status = guard.0.wait()?;
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "command {} failed ({status})",
                self.program
            )))
        }
    }
}

impl Read for CommandPipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut guard = self
            .inner
            .lock()
            .map_err(|_| io::Error::other("command state poisoned"))?;
        match guard.1.as_mut() {
            Some(out) => out.read(buf),
            None => Ok(0),
        }
    }
}

/// Wraps a source fed by a command: at the end of the stream the command must have exited 0,
/// else the source fails, and the backup with it, so no snapshot is saved.
pub struct CommandGate {
    inner: Box<dyn EntrySource + Send>,
    pipe: CommandPipe,
}

impl CommandGate {
    /// Gates `inner` on `pipe`'s exit status.
    pub fn new(inner: Box<dyn EntrySource + Send>, pipe: CommandPipe) -> Self {
        CommandGate { inner, pipe }
    }
}

impl EntrySource for CommandGate {
    fn next_entry(&mut self) -> Result<Option<Entry<'_>>, snapback_stream::Error> {
        match self.inner.next_entry()? {
            Some(entry) => Ok(Some(entry)),
            None => {
                self.pipe
                    .finish()
                    .map_err(snapback_stream::Error::ReadTar)?;
                Ok(None)
            }
        }
    }

    fn warnings(&self) -> &[Warning] {
        self.inner.warnings()
    }
}
