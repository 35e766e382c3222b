//! The only file that sees `fuser`: kernel requests in, [`S3Fs`] calls, replies out.
//! Anything that may wait on S3 runs as a task on the Tokio runtime and replies from
//! there, so the FUSE threads stay free for `ls` and reads of cached files.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use fuser::{
    BackingId, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request, Session, SessionACL, SessionUnmounter, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;
use tracing::{debug, info, warn};

use crate::fs::{Attr, FsError, Kind, S3Fs};

/// Largest read the kernel sends at once (and readahead it may do).
const MAX_READ: u32 = 1 << 20;

struct FuseAdapter {
    fs: Arc<S3Fs>,
    rt: Handle,
    /// Asked for by the configuration; `passthrough_on` says whether the kernel agreed.
    want_passthrough: bool,
    passthrough_on: Arc<AtomicBool>,
    modes: Arc<Mutex<OpenModes>>,
}

/// How each open file was handed to the kernel. The kernel refuses to mix page-cached
/// and passthrough opens of one inode, and wants every open of an inode in passthrough
/// mode to use the same backing file: so an inode has at most one backing id, shared by
/// all its passthrough opens (one inode is one object version, so its bytes are right for
/// every open of that inode).
#[derive(Default)]
struct OpenModes {
    by_fh: HashMap<u64, (u64, Mode)>,
    /// ino -> its backing file while any open uses it.
    backing: HashMap<u64, Weak<BackingId>>,
    /// ino -> its opens that are not passthrough (page-cached or direct_io).
    others: HashMap<u64, u32>,
}

enum Mode {
    /// Dropping the last one closes the kernel's backing file.
    Passthrough(#[allow(dead_code)] Arc<BackingId>),
    Cached,
    /// direct_io: the stats file, or an object still being filled.
    Uncached,
}

impl OpenModes {
    fn backing_of(&self, ino: u64) -> Option<Arc<BackingId>> {
        self.backing.get(&ino).and_then(Weak::upgrade)
    }

    fn other_opens(&self, ino: u64) -> u32 {
        self.others.get(&ino).copied().unwrap_or(0)
    }

    fn add(&mut self, fh: u64, ino: u64, mode: Mode) {
        match &mode {
            Mode::Passthrough(id) => {
                self.backing.insert(ino, Arc::downgrade(id));
            }
            Mode::Cached | Mode::Uncached => *self.others.entry(ino).or_default() += 1,
        }
        self.by_fh.insert(fh, (ino, mode));
    }

    fn remove(&mut self, fh: u64) {
        let Some((ino, mode)) = self.by_fh.remove(&fh) else {
            return;
        };
        match mode {
            Mode::Passthrough(id) => {
                drop(id);
                if self.backing_of(ino).is_none() {
                    self.backing.remove(&ino);
                }
            }
            Mode::Cached | Mode::Uncached => {
                if let Some(c) = self.others.get_mut(&ino) {
                    *c = c.saturating_sub(1);
                    if *c == 0 {
                        self.others.remove(&ino);
                    }
                }
            }
        }
    }
}

fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno())
}

fn to_file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
        kind: match a.kind {
            Kind::Dir => FileType::Directory,
            Kind::File => FileType::RegularFile,
        },
        perm: a.perm,
        nlink: if a.kind == Kind::Dir { 2 } else { 1 },
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        flags: 0,
        blksize: MAX_READ,
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        if let Err(max) = config.set_max_readahead(MAX_READ) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        // Listings already carry every attribute: handing them over with the names spares
        // `ls -l` one lookup round trip per entry.
        let _ = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS);
        // Lets a direct_io open (an object still downloading, with passthrough on) be
        // mmap()ed MAP_SHARED, as numpy.memmap and safetensors do; without it, ENODEV.
        let _ = config.add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP);
        let passthrough =
            self.want_passthrough && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok();
        if passthrough {
            // The cache directory itself may sit on a stacked filesystem.
            let _ = config.set_max_stack_depth(2);
            self.passthrough_on.store(true, Ordering::Relaxed);
        }
        // With the cache off there are no cache files to pass through or keep pages of:
        // every open reads S3, whatever the kernel offers.
        let read_path = match (self.fs.cache().enabled(), passthrough) {
            (false, _) => "straight from S3 (the cache is off: nothing is kept on local disk)",
            (true, true) => "FUSE passthrough (the kernel reads complete cache files directly)",
            (true, false) if self.want_passthrough => {
                "through s3cachefs, page cache kept across opens \
                 (this kernel offers no FUSE passthrough)"
            }
            (true, false) => "through s3cachefs, page cache kept across opens (passthrough off)",
        };
        info!("read path: {read_path}");
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(name) = name.to_str().map(str::to_string) else {
            reply.error(Errno::ENOENT);
            return;
        };
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.lookup(parent.0, &name).await {
                Ok(a) => reply.entry(&fs.attr_ttl(), &to_file_attr(&a), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    // fuser's default batch_forget calls this once per inode.
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(a) => reply.attr(&self.fs.attr_ttl(), &to_file_attr(&a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let f = flags.0;
        let write = (f & libc::O_ACCMODE) != libc::O_RDONLY || (f & libc::O_TRUNC) != 0;
        let direct = (f & libc::O_DIRECT) != 0;
        let fs = self.fs.clone();
        let (modes, pt_on) = (self.modes.clone(), self.passthrough_on.clone());
        self.rt.spawn(async move {
            let o = match fs.open(ino.0, write, direct).await {
                Ok(o) => o,
                Err(e) => {
                    reply.error(errno(&e));
                    return;
                }
            };
            let mut modes = modes.lock();
            // An inode already in passthrough mode: every open must share its backing,
            // O_DIRECT ones too (the kernel fails any other open of it with EIO).
            if !o.direct_io
                && let Some(id) = modes.backing_of(ino.0)
            {
                reply.opened_passthrough(FileHandle(o.fh), FopenFlags::empty(), &id);
                modes.add(o.fh, ino.0, Mode::Passthrough(id));
                drop(modes);
                fs.passthrough_opened(o.fh);
                return;
            }
            // Not beside any other open: a page-cached one, or a direct_io one that was
            // mmap()ed with MAP_SHARED, puts the inode in caching mode, and the kernel then
            // fails a passthrough open of it with EIO.
            let other_opens = modes.other_opens(ino.0);
            if let Some(file) = o.cache_file.as_ref().filter(|_| {
                pt_on.load(Ordering::Relaxed) && other_opens == 0 && !o.direct_io
            }) {
                match reply.open_backing(file.as_ref()) {
                    Ok(id) => {
                        let id = Arc::new(id);
                        reply.opened_passthrough(FileHandle(o.fh), FopenFlags::empty(), &id);
                        modes.add(o.fh, ino.0, Mode::Passthrough(id));
                        drop(modes);
                        fs.passthrough_opened(o.fh);
                        return;
                    }
                    Err(e) => {
                        // Not permitted (needs CAP_SYS_ADMIN) or not supported here.
                        if pt_on.swap(false, Ordering::Relaxed) {
                            warn!(error = %e, "FUSE passthrough refused; reading through s3cachefs from now on");
                        }
                    }
                }
            }
            let mut flags = FopenFlags::empty();
            // With passthrough on, an object not yet complete is opened uncached, so the
            // passthrough opens that follow once it is complete never meet a page-cached
            // open of the same inode (the kernel refuses that mix).
            let mode = if o.direct_io || pt_on.load(Ordering::Relaxed) {
                flags |= FopenFlags::FOPEN_DIRECT_IO;
                Mode::Uncached
            } else {
                if o.keep_cache {
                    flags |= FopenFlags::FOPEN_KEEP_CACHE;
                }
                Mode::Cached
            };
            reply.opened(FileHandle(o.fh), flags);
            modes.add(o.fh, ino.0, mode);
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        // Cached bytes are a pread away: answer on this thread.
        if let Some(r) = self.fs.read_fast(fh.0, offset, size) {
            match r {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(errno(&e)),
            }
            return;
        }
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.read(fh.0, offset, size).await {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.modes.lock().remove(fh.0);
        self.fs.release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.opendir(ino.0).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.fs.readdir(fh.0) {
            Ok(e) => e,
            Err(e) => {
                reply.error(errno(&e));
                return;
            }
        };
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            let kind = match e.kind {
                Kind::Dir => FileType::Directory,
                Kind::File => FileType::RegularFile,
            };
            // The offset given is that of the next entry.
            if reply.add(INodeNo(e.ino), (i + 1) as u64, kind, &e.name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        dir: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let entries = match self.fs.readdir(fh.0) {
            Ok(e) => e,
            Err(e) => {
                reply.error(errno(&e));
                return;
            }
        };
        let ttl = self.fs.attr_ttl();
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            // An entry whose name is gone since the snapshot is left out.
            let Some((ino, attr)) = self.fs.plus_entry(dir.0, e) else {
                continue;
            };
            if reply.add(
                INodeNo(ino),
                (i + 1) as u64,
                &e.name,
                &ttl,
                &to_file_attr(&attr),
                Generation(0),
            ) {
                self.fs.plus_entry_unsent(e, ino);
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.fs.statfs();
        reply.statfs(
            s.blocks,
            s.blocks_free,
            s.blocks_free,
            s.files,
            s.files_free,
            s.block_size,
            s.name_max,
            s.block_size,
        );
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    // No extended attributes. ENOSYS (rather than ENODATA per name) makes the kernel
    // remember that and answer every later getxattr itself: `ls -l` asks two per file.
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: fuser::ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::EROFS);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }
}

/// A mounted filesystem, not yet serving requests.
pub struct Mounted {
    session: Session<FuseAdapter>,
}

/// Takes the mount down from another thread (signal handler, tests).
pub struct Unmounter(SessionUnmounter);

impl Unmounter {
    pub fn unmount(&mut self) -> io::Result<()> {
        self.0.unmount()
    }
}

/// Threads answering the kernel, unless told otherwise.
pub const DEFAULT_THREADS: usize = 4;

/// What the kernel side of a mount needs to know.
#[derive(Debug, Clone)]
pub struct FuseOptions {
    pub mountpoint: PathBuf,
    /// Let other users see the mount.
    pub allow_other: bool,
    /// Threads answering the kernel.
    pub threads: usize,
    /// Use FUSE passthrough for complete cache files when the kernel allows it.
    pub passthrough: bool,
}

/// Mounts `fs` at the mountpoint: the kernel sees it from here on, and requests queue
/// until [`Mounted::run`].
pub fn mount(fs: Arc<S3Fs>, rt: Handle, settings: &FuseOptions) -> io::Result<Mounted> {
    let mut cfg = Config::default();
    cfg.mount_options = vec![
        MountOption::FSName("s3cachefs".into()),
        MountOption::Subtype("s3cachefs".into()),
        MountOption::RO,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoAtime,
        MountOption::DefaultPermissions,
        MountOption::CUSTOM(format!("max_read={MAX_READ}")),
    ];
    if settings.allow_other {
        cfg.acl = SessionACL::All;
    }
    cfg.n_threads = Some(settings.threads);
    cfg.clone_fd = settings.threads > 1;
    let adapter = FuseAdapter {
        fs,
        rt,
        want_passthrough: settings.passthrough,
        passthrough_on: Arc::new(AtomicBool::new(false)),
        modes: Arc::new(Mutex::new(OpenModes::default())),
    };
    let session = Session::new(adapter, &settings.mountpoint, &cfg)?;
    info!(mountpoint = %settings.mountpoint.display(), threads = settings.threads, "mounted");
    Ok(Mounted { session })
}

impl Mounted {
    pub fn unmounter(&mut self) -> Unmounter {
        Unmounter(self.session.unmount_callable())
    }

    /// Serves requests until the filesystem is unmounted.
    pub fn run(self) -> io::Result<()> {
        let r = self.session.run();
        debug!("FUSE session ended");
        r
    }
}
