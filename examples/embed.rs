//! Adding sandboxed WASM UDFs to your own DataFusion `SessionContext`: an
//! application depends on `weir-core` only (no Kafka client, HTTP server,
//! database or CLI comes with it).
//!
//! ```sh
//! ./scripts/demo.sh        # builds the example modules once
//! cargo run --example embed -- udfs/target/wasm32-unknown-unknown/release/geo.wasm
//! ```

use datafusion::prelude::SessionContext;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "udfs/target/wasm32-unknown-unknown/release/geo.wasm".to_string());

    // 1. A sandbox: default limits, compiled code cached on disk.
    let sandbox = weir_core::Sandbox::new()?;
    // 2. Load (validate, compile, instantiate once) a self-describing module.
    let module = sandbox.load_file(&path)?;
    // 3. Register its functions in any DataFusion session.
    let ctx = SessionContext::new();
    let names = weir_core::register_module(&ctx, &module);
    println!(
        "registered {names:?} from {} ({})",
        module.label(),
        &module.digest()[..12]
    );

    ctx.sql("SELECT gcd(84, 36) AS g, round(haversine_km(51.5074, -0.1278, 48.8566, 2.3522), 1) AS london_paris_km")
        .await?
        .show()
        .await?;
    Ok(())
}
