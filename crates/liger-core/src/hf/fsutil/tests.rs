use super::*;

/// A fresh folder under the system's temp folder, removed on drop.
struct Scratch(PathBuf);
impl Scratch {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("liger-fsutil-{:016x}", rand::random::<u64>()));
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn write_one(dir: &Path, content: &str) -> Result<()> {
    build_dir_atomically(dir, |tmp| write_file(&tmp.join("config.json"), content.as_bytes()))
}

#[test]
fn a_folder_with_the_users_files_is_never_replaced() {
    let s = Scratch::new();
    let out = s.0.join("out");
    fs::create_dir(&out).unwrap();
    fs::write(out.join("a.txt"), "keep").unwrap();
    let err = write_one(&out, "{}").unwrap_err();
    assert_eq!(err.code, crate::ErrorCode::InvalidArgument);
    assert!(err.message.contains("a.txt"), "{}", err.message);
    assert_eq!(fs::read_to_string(out.join("a.txt")).unwrap(), "keep");
    assert!(!out.join("config.json").exists());
    // No temporary folder is left beside it.
    assert_eq!(fs::read_dir(&s.0).unwrap().count(), 1);
    assert!(check_output_dir(&out).is_err());
}

#[test]
fn a_file_the_user_added_to_a_saved_folder_keeps_it_from_being_replaced() {
    let s = Scratch::new();
    let out = s.0.join("out");
    write_one(&out, "1").unwrap();
    assert!(out.join(MANIFEST).is_file());
    write_one(&out, "2").unwrap();
    assert_eq!(fs::read_to_string(out.join("config.json")).unwrap(), "2");
    fs::write(out.join("notes.md"), "mine").unwrap();
    fs::create_dir(out.join("sub")).unwrap();
    let err = write_one(&out, "3").unwrap_err();
    assert!(err.message.contains("notes.md") && err.message.contains("sub"), "{}", err.message);
    assert_eq!(fs::read_to_string(out.join("config.json")).unwrap(), "2");
    assert_eq!(fs::read_to_string(out.join("notes.md")).unwrap(), "mine");
}

#[test]
fn empty_folders_and_checkpoints_saved_before_manifests_are_replaced() {
    let s = Scratch::new();
    let empty = s.0.join("empty");
    fs::create_dir(&empty).unwrap();
    write_one(&empty, "new").unwrap();
    assert_eq!(fs::read_to_string(empty.join("config.json")).unwrap(), "new");

    let legacy = s.0.join("legacy");
    fs::create_dir(&legacy).unwrap();
    for f in ["config.json", "model.safetensors", "adapter_model.safetensors", "trainer_state.json"] {
        fs::write(legacy.join(f), "old").unwrap();
    }
    write_one(&legacy, "new").unwrap();
    assert_eq!(fs::read_to_string(legacy.join("config.json")).unwrap(), "new");
    assert!(!legacy.join("model.safetensors").exists());
    assert_eq!(fs::read_dir(&s.0).unwrap().count(), 2, "no temporary folder is left behind");
}

#[test]
fn a_file_in_place_of_the_folder_and_an_unwritable_parent_are_found_before_work() {
    let s = Scratch::new();
    let file = s.0.join("file");
    fs::write(&file, "x").unwrap();
    assert!(check_output_dir(&file).is_err());
    let missing_parent = s.0.join("no/such/place/out");
    assert_eq!(check_output_dir(&missing_parent).unwrap_err().code, crate::ErrorCode::Io);
    assert!(check_output_dir(&s.0.join("fresh")).is_ok());
    assert_eq!(fs::read_dir(&s.0).unwrap().count(), 1, "the check leaves nothing behind");
}

#[test]
fn stale_temporary_folders_of_dead_processes_are_removed_and_live_ones_kept() {
    let s = Scratch::new();
    let out = s.0.join("out");
    // Process ids above the kernel's pid_max (4194304) never run.
    let dead = s.0.join(".out.tmp-4294967295-0-00");
    let old = s.0.join(".out.old-4294967294-3-ff");
    let live = s.0.join(format!(".out.tmp-{}-99-ab", std::process::id()));
    let other = s.0.join(".other.tmp-4294967295-0-00");
    for d in [&dead, &old, &live, &other] {
        fs::create_dir(d).unwrap();
    }
    write_one(&out, "x").unwrap();
    assert!(!dead.exists() && !old.exists());
    assert!(live.exists() && other.exists());
}

#[test]
fn temporary_names_are_unpredictable() {
    let p = Path::new("/x/out");
    let (a, b) = (temp_sibling(p, "tmp").unwrap(), temp_sibling(p, "tmp").unwrap());
    assert_ne!(a, b);
    let tail = |p: &Path| p.file_name().unwrap().to_string_lossy().rsplit('-').next().unwrap().to_string();
    assert_eq!(tail(&a).len(), 16);
    assert_ne!(tail(&a), tail(&b));
}
