//! Placeholder until the FAT32 writer lands.
use crate::layout::Layout;
pub struct FatFile {
    pub path: String,
    pub content: Layout,
}
pub struct FatParams {
    pub size: u64,
    pub label: String,
    pub volume_id: u32,
    pub hidden_sectors: u32,
    pub mtime: u64,
}
pub fn build_fat32(params: &FatParams, files: &[FatFile]) -> anyhow::Result<Layout> {
    let _ = files;
    Ok(Layout::new(params.size))
}
