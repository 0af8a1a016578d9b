//! OCI image layouts made around fuzzed layers, with every digest right. Plain std and
//! `sha2`: `cargo xtask fuzz` includes this file too, to check its seeds the way the targets
//! read them.

/// Which form an input of the OCI targets takes, by its first byte: `0x01`: the rest is one
/// image layer (a tar); `0x02`: the rest is two layers separated by [`LAYER_SEPARATOR`];
/// anything else: the whole input is the archive as is. Layers are wrapped into an OCI layout
/// tar whose digests match ([`oci_layout_tar`]), so mutations of a layer get past the digest
/// checks to the layer reader.
pub fn oci_input(data: &[u8], arch: &str) -> Vec<u8> {
    match data.split_first() {
        Some((1, layer)) => oci_layout_tar(&[layer], arch),
        Some((2, rest)) => {
            let at = rest
                .windows(LAYER_SEPARATOR.len())
                .position(|w| w == LAYER_SEPARATOR);
            match at {
                Some(i) => oci_layout_tar(&[&rest[..i], &rest[i + LAYER_SEPARATOR.len()..]], arch),
                None => oci_layout_tar(&[rest], arch),
            }
        }
        _ => data.to_vec(),
    }
}

/// Between the two layers of a `0x02` input (see [`oci_input`]).
pub const LAYER_SEPARATOR: &[u8] = b"\n--next-layer--\n";

fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An OCI image layout as a tar (`oci-layout`, `index.json`, `blobs/sha256/…`) holding one
/// linux/`arch` image whose layers are `layers` (uncompressed tars), every digest right.
pub fn oci_layout_tar(layers: &[&[u8]], arch: &str) -> Vec<u8> {
    let descriptor = |media: &str, blob: &[u8]| {
        format!(
            "{{\"mediaType\":\"{media}\",\"digest\":\"sha256:{}\",\"size\":{}}}",
            sha256_hex(blob),
            blob.len()
        )
    };
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| format!("\"sha256:{}\"", sha256_hex(l)))
        .collect();
    let config = format!(
        "{{\"architecture\":\"{arch}\",\"os\":\"linux\",\"config\":{{}},\
         \"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[{}]}}}}",
        diff_ids.join(",")
    )
    .into_bytes();
    let layer_descriptors: Vec<String> = layers
        .iter()
        .map(|l| descriptor("application/vnd.oci.image.layer.v1.tar", l))
        .collect();
    let manifest = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\
         \"config\":{},\"layers\":[{}]}}",
        descriptor("application/vnd.oci.image.config.v1+json", &config),
        layer_descriptors.join(",")
    )
    .into_bytes();
    let index = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\
         \"manifests\":[{{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\
         \"digest\":\"sha256:{}\",\"size\":{},\"platform\":{{\"architecture\":\"{arch}\",\
         \"os\":\"linux\"}}}}]}}",
        sha256_hex(&manifest),
        manifest.len()
    )
    .into_bytes();
    let mut members: Vec<(String, &[u8])> = vec![
        ("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#),
        ("index.json".into(), &index),
        (format!("blobs/sha256/{}", sha256_hex(&config)), &config),
        (format!("blobs/sha256/{}", sha256_hex(&manifest)), &manifest),
    ];
    for l in layers {
        members.push((format!("blobs/sha256/{}", sha256_hex(l)), l));
    }
    ustar(&members)
}

/// A plain ustar archive of regular files (names under 100 bytes).
fn ustar(members: &[(String, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in members {
        let mut h = [0u8; 512];
        let n = name.len().min(99);
        h[..n].copy_from_slice(&name.as_bytes()[..n]);
        h[100..108].copy_from_slice(b"0000644\0");
        h[108..116].copy_from_slice(b"0000000\0");
        h[116..124].copy_from_slice(b"0000000\0");
        h[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
        h[136..148].copy_from_slice(b"00000000000\0");
        h[148..156].fill(b' ');
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}
