//! Prints the OCI layout of the ordinary Debian test image (Debian bookworm with Python,
//! serving `/srv` on port 8080), building it first if this machine has none yet.

fn main() -> anyhow::Result<()> {
    let layout = aloft_testkit::debian::layout()?;
    println!("{}:{}", layout.display(), aloft_testkit::debian::TAG);
    Ok(())
}
