//! `FileStore::info` looks at a state folder without taking it over or creating anything, and
//! `FileStore::delete` removes a state file only through the lock.

use keyturn_store::FileStore;
use keyturn_store::file::{BACKUP_FILE, LOCK_FILE, STATE_FILE};

#[test]
fn info_creates_nothing_in_a_folder_without_state() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("never-used");
    let info = FileStore::info(&dir);
    assert_eq!(info.path, dir.join(STATE_FILE));
    assert!(info.written.is_none() && info.lock.is_none() && info.backup.is_none());
    assert!(!dir.exists(), "looking created the folder");
}

#[test]
fn info_tells_a_held_lock_from_a_free_one_and_reads_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FileStore::open(tmp.path()).unwrap();
    std::fs::write(tmp.path().join(STATE_FILE), "{\"schema\": 1}").unwrap();
    let info = FileStore::info(tmp.path());
    let lock = info.lock.clone().unwrap();
    assert!(lock.held, "{info:?}");
    assert_eq!(lock.last_pid, std::process::id().to_string());
    let written = info.written.unwrap();
    assert_eq!(written.size, 13);
    assert!(
        written.contents.is_err(),
        "a file without a snapshot is not a state"
    );
    drop(store);
    let lock = FileStore::info(tmp.path()).lock.unwrap();
    assert!(!lock.held, "released when the store closed");
    assert!(tmp.path().join(LOCK_FILE).exists());
}

#[test]
fn delete_removes_an_unreadable_state_file_and_keeps_the_backup() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join(STATE_FILE), "not json").unwrap();
    std::fs::write(tmp.path().join(BACKUP_FILE), "old").unwrap();
    let store = FileStore::open(tmp.path()).unwrap();
    assert!(
        FileStore::info(tmp.path())
            .written
            .unwrap()
            .contents
            .is_err()
    );
    store.delete().unwrap();
    assert!(!tmp.path().join(STATE_FILE).exists());
    assert_eq!(
        FileStore::info(tmp.path()).backup,
        Some(tmp.path().join(BACKUP_FILE))
    );
    // Deleting what is already gone is not an error.
    store.delete().unwrap();
}

/// `keyturn console` re-reads the state file every second while a seed may run: a state file
/// that is huge, or no file at all (a pipe would block the read for ever), is refused unread.
#[test]
fn a_huge_state_file_or_a_pipe_is_refused_unread() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(STATE_FILE);
    // Sparse: 256 MiB and one byte of nothing, no disk used.
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(256 * 1024 * 1024 + 1).unwrap();
    let err = FileStore::read(&path).unwrap_err().to_string();
    assert!(err.contains("larger than 256 MiB"), "{err}");
    std::fs::remove_file(&path).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .unwrap();
    assert!(made.success());
    let err = FileStore::read(&path).unwrap_err().to_string();
    assert!(err.contains("not a regular file"), "{err}");
    // `keyturn state info` says the same without hanging on it.
    assert!(
        FileStore::info(tmp.path())
            .written
            .unwrap()
            .contents
            .is_err()
    );
}
