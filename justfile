# The verbs of ./dev, for people who use just (https://just.systems): `just --list`.
# ./dev is the source of truth; each recipe calls it (or the script it calls).

# List the recipes.
default:
    @just --list

# Two throwaway PostgreSQL clusters with pgvane and the example plugins in front (Ctrl-C stops).
demo *args:
    ./dev demo {{args}}

# Every test: unit, integration (real PostgreSQL, HAProxy, drivers) and a short fuzz pass.
test:
    ./dev test

# rustfmt and clippy, as CI runs them.
lint:
    ./dev lint

# The benchmark against PostgreSQL and PgBouncer (bench/README.md).
bench *args:
    ./dev bench {{args}}

# Build the example plugins into target/plugins/ (all, --rust, or the named ones).
build-plugins *args:
    bash plugins/build.sh {{args}}
