#!/usr/bin/env bash
# build-packages.sh: builds the Debian packages vantage (the coordinator) and
# vantage-agent (the agent and the origin witness) with cargo-deb.
#
#   deploy/debian/build-packages.sh [OUT_DIR]
#
# 1. builds the stripped release binaries (`cargo build --release --locked`);
# 2. generates what the packages carry but the build does not make: man
#    pages (`BINARY man DIR`, gzipped) and bash, zsh and fish completions
#    (`BINARY completions SHELL`), from the release binaries themselves, into
#    target/debian-assets/<package>/ (the paths the crates' Cargo.toml
#    [package.metadata.deb] assets name);
# 3. runs `cargo deb --no-build` for each package, writing the .debs into
#    OUT_DIR (default: $VANTAGE_DEB_DIR, else target/debian), and prints
#    their paths, one a line, on stdout (everything else goes to stderr).
#
# Needs cargo-deb (`cargo install cargo-deb --locked`; .ci/run pins the
# version), dpkg-dev's dpkg-shlibdeps for the dependencies, and gzip.
# CARGO_TARGET_DIR is honoured. See deploy/debian/README.md.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"

out=${1:-${VANTAGE_DEB_DIR:-$repo/target/debian}}
mkdir -p "$out"
out=$(cd "$out" && pwd)

command -v cargo-deb >/dev/null || {
	echo "build-packages.sh: cargo-deb is missing (cargo install cargo-deb --locked)" >&2
	exit 1
}

echo "== release binaries" >&2
cargo build --release --locked -p vantage -p vantage-agent >&2

# Where cargo put them (CARGO_TARGET_DIR or a config may move it).
target_dir=$(cargo metadata --format-version 1 --no-deps --locked |
	sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[ -n "$target_dir" ] || {
	echo "build-packages.sh: cannot read the target directory from cargo metadata" >&2
	exit 1
}

assets=$repo/target/debian-assets
for bin in vantage vantage-agent; do
	exe=$target_dir/release/$bin
	echo "== man pages and completions of $bin" >&2
	rm -rf "${assets:?}/$bin"
	mkdir -p "$assets/$bin/man" "$assets/$bin/completions"
	"$exe" man "$assets/$bin/man" >/dev/null
	# -n: no name or time stamp in the header, so a rebuild is identical.
	gzip -9nf "$assets/$bin/man/"*.1
	"$exe" completions bash >"$assets/$bin/completions/$bin"
	"$exe" completions zsh >"$assets/$bin/completions/_$bin"
	"$exe" completions fish >"$assets/$bin/completions/$bin.fish"
done

for package in vantage vantage-agent; do
	echo "== cargo deb -p $package" >&2
	# cargo-deb prints the path of the .deb it wrote as its last line. It
	# also warns, once per generated asset, that a '../target/…' path "will
	# not be built": true and intended (this script made those files).
	deb=$(cargo deb -p "$package" --no-build --locked --output "$out" | tail -n 1)
	[ -f "$deb" ] || {
		echo "build-packages.sh: cargo deb -p $package wrote no .deb (it said: $deb)" >&2
		exit 1
	}
	printf '%s\n' "$deb"
done
