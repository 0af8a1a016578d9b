//! Machine configurations for tests, the demo and the boot test: realistic shapes with
//! recognizable fake secrets (never real keys).

use base64::Engine;

/// A token that must never appear in messages or Debug output.
pub const SECRET: &str = "SECRETTOKEN.q7w8e9r0t1y2u3i4";

pub fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A control plane configuration with recognizable secrets.
pub fn controlplane_yaml() -> String {
    let crt = b64("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n");
    let key = b64(&format!(
        "-----BEGIN ED25519 PRIVATE KEY-----\n{SECRET}\n-----END ED25519 PRIVATE KEY-----\n"
    ));
    format!(
        "version: v1alpha1\n\
         debug: false\n\
         machine:\n  type: controlplane\n  token: {SECRET}\n  ca:\n    crt: {crt}\n    key: {key}\n\
         \x20 install:\n    disk: /dev/nvme0n1\n  network:\n    hostname: edge-01\n\
         cluster:\n  clusterName: edge\n  controlPlane:\n    endpoint: https://10.0.0.1:6443\n\
         \x20 secret: {SECRET}\n  ca:\n    crt: {crt}\n    key: {key}\n\
         ---\napiVersion: v1alpha1\nkind: ExtensionServiceConfig\nname: edgehostlet\n\
         environment:\n  - TOKEN={SECRET}\n"
    )
}

pub fn worker_yaml() -> String {
    let crt = b64("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n");
    format!(
        "version: v1alpha1\nmachine:\n  type: worker\n  token: {SECRET}\n  ca:\n    crt: {crt}\n\
         cluster:\n  controlPlane:\n    endpoint: https://cp.example:6443\n  ca:\n    crt: {crt}\n"
    )
}
