//! `crdgen DIR`: writes every Reflow CRD as YAML into DIR (used by `make crds`).

fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "crds/yaml".to_owned());
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("crdgen: creating {dir}: {e}");
        std::process::exit(1);
    }
    for (file, crd) in reflow_crds::crdgen::all() {
        let path = std::path::Path::new(&dir).join(file);
        let written = reflow_crds::crdgen::render(&crd)
            .map_err(|e| e.to_string())
            .and_then(|yaml| std::fs::write(&path, yaml).map_err(|e| e.to_string()));
        if let Err(e) = written {
            eprintln!("crdgen: {}: {e}", path.display());
            std::process::exit(1);
        }
        println!("wrote {}", path.display());
    }
}
