#!/usr/bin/env bash
# Fetch public-domain English prose for perplexity evaluation and quantizer
# calibration. The texts ship inside two pinned Debian packages (the only
# registries reachable here are PyPI, Debian, crates.io and npm):
#
#   r-cran-janeaustenr 1.0.0-1 (all)    Jane Austen's novels as R data (MIT package;
#                                       texts from Project Gutenberg, public domain)
#   r-cran-tokenizers  0.3.0-1 (amd64)  Herman Melville, "Moby Dick; or The Whale"
#                                       (Project Gutenberg EBook #2701, public domain)
#
# Both keep their data in R's lazy-load database (data/Rdata.rdx + Rdata.rdb:
# zlib-compressed R serialization); a small Python reader below pulls the
# character vectors out, so R is not needed. Output, one UTF-8 file per work,
# LF line endings, Project Gutenberg header/footer removed:
#
#   $TERN_CACHE/texts/pride-and-prejudice.txt    Austen, 1813
#   $TERN_CACHE/texts/moby-dick.txt              Melville, 1851
#   $TERN_CACHE/texts/emma.txt                   Austen, 1815
#   $TERN_CACHE/texts/sense-and-sensibility.txt  Austen, 1811
#   $TERN_CACHE/texts/mansfield-park.txt         Austen, 1814
#   $TERN_CACHE/texts/persuasion.txt             Austen, 1817
#
# The package files and the resulting texts are both checked against the
# sha256 pins below. Idempotent: texts already present with the right hash are
# left alone (and nothing is downloaded). Files are written atomically.
#
# Needs: bash, coreutils, python3, apt-get + dpkg-deb (runs `apt-get update`
# once if the pinned version is not in the package lists; that needs root).
#
# Usage: scripts/fetch-texts.sh
# Environment:
#   TERN_CACHE   cache root (default $HOME/.cache/tern)
set -euo pipefail

die() { echo "error: $*" >&2; exit 1; }
log() { echo "fetch-texts: $*" >&2; }
trap 'echo "error: fetch-texts.sh: command failed at line $LINENO" >&2; exit 1' ERR

case "${1:-}" in
    "") ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (try --help)" ;;
esac

# Package pins: name version architecture sha256-of-.deb
PKGS=(
    "r-cran-janeaustenr 1.0.0-1 all df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95"
    "r-cran-tokenizers 0.3.0-1 amd64 6312f013ebfde5650235bfd7ba5c44d9e4cf9f2da9855337c9483fe778f0d8c7"
)
# Text pins: output-name package R-library-dir R-variable sha256-of-output
TEXTS=(
    "pride-and-prejudice r-cran-janeaustenr janeaustenr prideprejudice dfc684d4f857fa938268f9ab9c5567b64bd0691251eca959644adeabe6287a4d"
    "moby-dick r-cran-tokenizers tokenizers mobydick 9e3d261b78acf02460be3d39aaae55ad3b3ea301c2422d018109f47a1c1696fe"
    "emma r-cran-janeaustenr janeaustenr emma 7c67b5985c6d0de1efaeb5d342d52cb82c38083c40e2295129e30e87ee690ebe"
    "sense-and-sensibility r-cran-janeaustenr janeaustenr sensesensibility 105e1651fe93bed7130078578efd31e0c557d68667ba672ddc876f735b30fe09"
    "mansfield-park r-cran-janeaustenr janeaustenr mansfieldpark 98bc90519cdf4ef663ad7de2734bb529435ef24f7abbde6bb1a50898871dafe9"
    "persuasion r-cran-janeaustenr janeaustenr persuasion 8061549557aebd2fd6e353d18d9197cb707029112bd52d4d8b174583a925848a"
)

command -v python3 >/dev/null || die "python3 not found"
command -v sha256sum >/dev/null || die "sha256sum not found"

CACHE=${TERN_CACHE:-$HOME/.cache/tern}
OUT="$CACHE/texts"
mkdir -p "$OUT" || die "cannot create $OUT"

sha() { sha256sum "$1" | cut -d' ' -f1; }

# Which texts are missing or stale, and which packages they need.
declare -A NEED_PKG=()
TODO=()
for t in "${TEXTS[@]}"; do
    read -r name pkg _ _ want <<<"$t"
    f="$OUT/$name.txt"
    if [[ -f "$f" && "$(sha "$f")" == "$want" ]]; then continue; fi
    TODO+=("$t")
    NEED_PKG[$pkg]=1
done
if ((${#TODO[@]} == 0)); then
    log "all ${#TEXTS[@]} texts present and verified in $OUT"
    exit 0
fi

command -v apt-get >/dev/null || die "apt-get not found (a Debian system is needed)"
command -v dpkg-deb >/dev/null || die "dpkg-deb not found"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/tern-texts.XXXXXX")
cleanup() { rm -rf "$WORK"; rm -f "$OUT"/.*.txt.tmp.$$; }
trap cleanup EXIT

ARCH=$(dpkg --print-architecture)
UPDATED=0
fetch_deb() { # name version arch sha -> extracts into $WORK/$name
    local name=$1 ver=$2 arch=$3 want=$4 spec deb got
    if [[ "$arch" != all && "$arch" != "$ARCH" ]]; then
        die "$name $ver is pinned for $arch only; this machine is $ARCH (add a pin for it)"
    fi
    spec="$name=$ver"
    mkdir -p "$WORK/dl"
    if ! (cd "$WORK/dl" && apt-get download -q "$spec") >"$WORK/apt.log" 2>&1; then
        if ((UPDATED == 0)) && [[ $(id -u) == 0 ]]; then
            log "running apt-get update"
            apt-get update -q >"$WORK/apt-update.log" 2>&1 ||
                die "apt-get update failed: $(tail -n1 "$WORK/apt-update.log")"
            UPDATED=1
            (cd "$WORK/dl" && apt-get download -q "$spec") >"$WORK/apt.log" 2>&1 ||
                die "apt-get download $spec failed: $(grep -E '^E:' "$WORK/apt.log" | head -n1)"
        else
            die "apt-get download $spec failed (run 'apt-get update' as root?): $(grep -E '^E:' "$WORK/apt.log" | head -n1)"
        fi
    fi
    deb="$WORK/dl/${name}_${ver//:/%3a}_${arch}.deb"
    [[ -f "$deb" ]] || die "apt-get download $spec left no $(basename "$deb")"
    got=$(sha "$deb")
    [[ "$got" == "$want" ]] || die "$(basename "$deb"): sha256 $got, expected $want"
    dpkg-deb -x "$deb" "$WORK/$name" || die "cannot unpack $(basename "$deb")"
}

for p in "${PKGS[@]}"; do
    read -r name ver arch want <<<"$p"
    [[ -n "${NEED_PKG[$name]:-}" ]] || continue
    log "downloading $name $ver"
    fetch_deb "$name" "$ver" "$arch" "$want"
done

# Extract and clean each text: python3 reads the R lazy-load DB and writes
# "$OUT/.<name>.txt.tmp.<pid>"; bash checks the hash and renames.
ARGS=()
for t in "${TODO[@]}"; do
    read -r name pkg lib var _ <<<"$t"
    ARGS+=("$WORK/$pkg/usr/lib/R/site-library/$lib/data" "$var" "$OUT/.$name.txt.tmp.$$")
done

python3 - "${ARGS[@]}" <<'PY' || exit 1
import gzip, re, struct, sys, zlib

class Fail(Exception):
    pass

class RReader:
    """Just enough of R's XDR serialization (format 2/3) for data objects."""
    def __init__(self, b):
        self.b, self.p, self.refs = b, 0, []
        if b[:2] != b"X\n":
            raise Fail("not an XDR R serialization")
        self.p = 2
        ver = self.int(); self.int(); self.int()
        if ver == 3:
            n = self.int(); self.p += n  # native encoding name
    def int(self):
        v = struct.unpack_from(">i", self.b, self.p)[0]; self.p += 4; return v
    def item(self):
        f = self.int(); t = f & 0xFF
        has_attr, has_tag = f & (1 << 9), f & (1 << 10)
        if t in (241, 242, 247, 250, 251, 253, 254):  # special environments, NULL
            return None
        if t == 255:  # reference
            k = (f >> 8) or self.int(); return self.refs[k - 1]
        if t == 1:  # symbol
            s = ("sym", self.item()); self.refs.append(s); return s
        if t in (2, 5, 6, 17):  # pairlist-like: [(tag, value)]
            out = []
            while True:
                if has_attr: self.item()
                tag = self.item() if has_tag else None
                out.append((tag[1] if tag else None, self.item()))
                f = self.int(); t = f & 0xFF
                has_attr, has_tag = f & (1 << 9), f & (1 << 10)
                if t == 254: return out
                if t not in (2, 5, 6, 17):
                    self.p -= 4; out.append((None, self.item())); return out
        if t == 9:  # CHARSXP
            n = self.int()
            if n == -1: return None
            s = self.b[self.p:self.p + n]; self.p += n
            return s.decode("latin-1" if f & (1 << 2) else "utf-8")
        if t in (10, 13, 14, 16, 19, 20):  # logical, int, real, str, list, expr
            n = self.int()
            if n == -1: n = (self.int() << 32) + self.int()
            if t in (16, 19, 20): v = [self.item() for _ in range(n)]
            elif t == 14: v = list(struct.unpack_from(">%dd" % n, self.b, self.p)); self.p += 8 * n
            else: v = list(struct.unpack_from(">%di" % n, self.b, self.p)); self.p += 4 * n
            attrs = dict(self.item()) if has_attr else {}
            return {"type": t, "v": v, "attrs": attrs}
        raise Fail("unsupported R SEXP type %d at byte %d" % (t, self.p))

def load_var(datadir, var):
    idx = RReader(gzip.decompress(open(datadir + "/Rdata.rdx", "rb").read())).item()
    top = dict(zip(idx["attrs"]["names"]["v"], idx["v"]))
    vars_ = top["variables"]
    where = dict(zip(vars_["attrs"]["names"]["v"], vars_["v"]))
    if var not in where:
        raise Fail("%s: no variable %r (has %s)" % (datadir, var, ", ".join(where)))
    if top["compressed"]["v"] != [1]:
        raise Fail("%s: unsupported compression %r" % (datadir, top["compressed"]["v"]))
    off, length = where[var]["v"]
    with open(datadir + "/Rdata.rdb", "rb") as fh:
        fh.seek(off); blk = fh.read(length)
    raw = zlib.decompress(blk[4:])
    if len(raw) != struct.unpack(">I", blk[:4])[0]:
        raise Fail("%s: bad length for %r" % (datadir, var))
    obj = RReader(raw).item()
    if not isinstance(obj, dict) or obj["type"] != 16 or None in obj["v"]:
        raise Fail("%s: %r is not a character vector without NAs" % (datadir, var))
    return "\n".join(obj["v"])

START = re.compile(r"^\*\*\* ?START OF (THIS|THE) PROJECT GUTENBERG E-?BOOK.*$", re.M | re.I)
END = re.compile(r"^\*\*\* ?END OF (THIS|THE) PROJECT GUTENBERG E-?BOOK.*$", re.M | re.I)
END_LINE = re.compile(r"\n[ \t]*End of (the )?Project Gutenberg.*\s*\Z", re.I)
NOTES = re.compile(r"^(Original )?Transcriber'?s Notes?:\n.*?\n\n\n+", re.S | re.M | re.I)
PRODUCED = re.compile(r"\A(Produced by|Transcribed by|E-?text prepared by)[^\n]*(\n[^\n]+)*\n*", re.I)

def clean(text, var):
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    s = START.search(text)
    if s:  # Project Gutenberg e-text: keep only the work itself
        e = END.search(text, s.end())
        if not e:
            raise Fail("%r: Gutenberg START marker without END marker" % var)
        text = text[s.end():e.start()]
        text = END_LINE.sub("\n", text).strip("\n")
        text = PRODUCED.sub("", text)
        text = NOTES.sub("", text, count=1)  # e-text transcriber's notes
    elif re.search(r"project gutenberg", text, re.I):
        raise Fail("%r: mentions Project Gutenberg but has no START marker" % var)
    return text.strip("\n") + "\n"

try:
    a = sys.argv[1:]
    for datadir, var, dest in zip(a[0::3], a[1::3], a[2::3]):
        with open(dest, "w", encoding="utf-8", newline="\n") as out:
            out.write(clean(load_var(datadir, var), var))
except (Fail, OSError, ValueError, KeyError, IndexError, struct.error, zlib.error) as e:
    print("error: extracting texts: %s" % (e,), file=sys.stderr)
    sys.exit(1)
PY

for t in "${TODO[@]}"; do
    read -r name _ _ _ want <<<"$t"
    tmp="$OUT/.$name.txt.tmp.$$"
    got=$(sha "$tmp")
    [[ "$got" == "$want" ]] || die "$name.txt: sha256 $got, expected $want"
    mv -f "$tmp" "$OUT/$name.txt"
    log "wrote $OUT/$name.txt ($(wc -c <"$OUT/$name.txt") bytes)"
done
log "all ${#TEXTS[@]} texts present and verified in $OUT"
