#!/usr/bin/env bash
# Compares the cpu-clock profiles that a PERF=1 run of bench/run.sh left in its folder:
#
#   bench/perf-table.sh RUN_FOLDER [TOP]
#
# For each profiled target (its rounds together): user and kernel CPU in µs per request as the
# samples count it, then the TOP (default 25) kernel symbols by their largest cost in any
# target, in µs per request of each target (self time: what the symbol itself ran, not its
# callees), and the events `perf stat` counted beside it (wake-ups the proxy started, its
# context switches, its system calls) per request. Prints markdown.
set -euo pipefail
RUN=${1:?usage: bench/perf-table.sh RUN_FOLDER [TOP]}
TOP=${2:-25}
command -v perf >/dev/null || { echo "perf-table.sh: perf is missing (apt: linux-perf)" >&2; exit 1; }
shopt -s nullglob
files=("$RUN"/perf-*-r*.data)
((${#files[@]})) || { echo "perf-table.sh: no perf-*.data in $RUN (run bench/run.sh with PERF=1)" >&2; exit 1; }

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
targets=()
for f in "${files[@]}"; do
    base=${f##*/perf-}
    base=${base%.data}
    t=${base%-r*}
    round=${base##*-r}
    [[ " ${targets[*]} " == *" $t "* ]] || targets+=("$t")
    freq=$(perf evlist -F -i "$f" 2>/dev/null | sed -n 's/.*sample_freq=\([0-9]*\).*/\1/p' | head -1)
    reqs=$(awk '$2 == "requests" && $3 == "in" { print $1 }' "$RUN/wrk-$t-r$round.txt")
    [[ -n $freq && -n $reqs ]] || { echo "perf-table.sh: no frequency or request count for $f" >&2; exit 1; }
    # "samples  [k]|[.]  symbol" lines, self time only.
    perf report -i "$f" --stdio --no-children -g none -n --sort dso,sym --percent-limit 0 2>/dev/null \
        | awk -v t="$t" -v freq="$freq" -v reqs="$reqs" '
            $1 ~ /%$/ && $2 ~ /^[0-9]+$/ {
                kind = ($4 == "[k]") ? "k" : "u"
                sym = $5; for (i = 6; i <= NF; i++) sym = sym " " $i
                printf "%s\t%s\t%s\t%.6f\n", t, kind, sym, $2 / freq * 1e6 / reqs
            }' >>"$TMP/samples.tsv"
    printf '%s\t%s\n' "$t" "$reqs" >>"$TMP/requests.tsv"
    # perf stat -x, lines: count,unit,event,...
    if [[ -f ${f%.data}.stat ]]; then
        awk -F, -v t="$t" -v reqs="$reqs" '$1 ~ /^[0-9]+$/ { printf "%s\t%s\t%.4f\n", t, $3, $1 / reqs }' \
            "${f%.data}.stat" >>"$TMP/counts.tsv"
    fi
    # Wake-ups by the wakee's command name ("comm=wrk pid=..." in the tracepoint's fields).
    if [[ -f ${f%.data}.wakes ]]; then
        perf script -i "${f%.data}.wakes" -F trace 2>/dev/null \
            | sed -n 's/.*comm=\(.*\) pid=.*/\1/p' \
            | awk -v t="$t" -v reqs="$reqs" '{ n[$0]++ } END { for (c in n) printf "%s\twakes %s\t%.4f\n", t, c, n[c] / reqs }' \
                >>"$TMP/counts.tsv"
    fi
done

# A target profiled over several rounds: each round's µs per request, averaged.
awk -F'\t' -v top="$TOP" -v order="${targets[*]}" '
    FILENAME == ARGV[1] { rounds[$1]++; next }
    {
        us[$1 SUBSEP $2 SUBSEP $3] += $4
        total[$1 SUBSEP $2] += $4
        if ($2 == "k") syms[$3] = 1
    }
    END {
        n = split(order, t, " ")
        printf "| µs per request (samples) |"; for (i = 1; i <= n; i++) printf " %s |", t[i]; printf "\n"
        printf "|---|"; for (i = 1; i <= n; i++) printf "---:|"; printf "\n"
        printf "| user |"; for (i = 1; i <= n; i++) printf " %.2f |", total[t[i] SUBSEP "u"] / rounds[t[i]]; printf "\n"
        printf "| kernel |"; for (i = 1; i <= n; i++) printf " %.2f |", total[t[i] SUBSEP "k"] / rounds[t[i]]; printf "\n"
        # Kernel symbols by their largest cost in any target.
        m = 0
        for (s in syms) {
            best = 0
            for (i = 1; i <= n; i++) { v = us[t[i] SUBSEP "k" SUBSEP s] / rounds[t[i]]; if (v > best) best = v }
            m++; name[m] = s; key[m] = best
        }
        for (i = 2; i <= m; i++) {
            x = key[i]; y = name[i]
            for (j = i - 1; j >= 1 && key[j] < x; j--) { key[j + 1] = key[j]; name[j + 1] = name[j] }
            key[j + 1] = x; name[j + 1] = y
        }
        for (r = 1; r <= m && r <= top; r++) {
            printf "| `%s` |", name[r]
            for (i = 1; i <= n; i++) printf " %.3f |", us[t[i] SUBSEP "k" SUBSEP name[r]] / rounds[t[i]]
            printf "\n"
        }
    }' "$TMP/requests.tsv" "$TMP/samples.tsv"

if [[ -s $TMP/counts.tsv ]]; then
    echo
    awk -F'\t' -v order="${targets[*]}" '
        FILENAME == ARGV[1] { rounds[$1]++; next }
        { c[$1 SUBSEP $2] += $3; if (!($2 in seen)) { seen[$2] = 1; ev[++m] = $2 } }
        END {
            n = split(order, t, " ")
            printf "| per request (perf stat) |"; for (i = 1; i <= n; i++) printf " %s |", t[i]; printf "\n"
            printf "|---|"; for (i = 1; i <= n; i++) printf "---:|"; printf "\n"
            for (e = 1; e <= m; e++) {
                printf "| `%s` |", ev[e]
                for (i = 1; i <= n; i++) printf " %.3f |", c[t[i] SUBSEP ev[e]] / rounds[t[i]]
                printf "\n"
            }
        }' "$TMP/requests.tsv" "$TMP/counts.tsv"
fi
