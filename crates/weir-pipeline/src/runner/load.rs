//! Pipeline files: one, or a folder of them.

use super::*;

/// Loads a pipeline file, or every `*.toml` in a folder; with `infer`, a
/// json or csv source may leave `fields` out (see [`crate::infer`]).
///
/// # Errors
/// [`PipelineError::Invalid`]: a file or folder that cannot be read, a
/// folder without pipeline files, a file that is not a valid pipeline.
pub fn load_pipelines(
    path: &std::path::Path,
    infer: bool,
) -> Result<Vec<PipelineConfig>, PipelineError> {
    load(path, infer).map_err(PipelineError::Invalid)
}

fn load(path: &std::path::Path, infer: bool) -> anyhow::Result<Vec<PipelineConfig>> {
    let files: Vec<std::path::PathBuf> = if path.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    if files.is_empty() {
        bail!("no pipeline files (*.toml) in {}", path.display());
    }
    files
        .iter()
        .map(|f| {
            if infer {
                PipelineConfig::from_file_to_infer(f)
            } else {
                PipelineConfig::from_file(f)
            }
            .map_err(anyhow::Error::from)
        })
        .collect()
}
