# Ratios from the last bench/run: Hostel's time or memory over its peer's (lower is
# better; 1 is parity). gnuplot -e "data='docs/benchmarks.tsv'; out='docs/benchmarks.png'"
set terminal pngcairo size 1100,520 font "sans,10"
set output out
set datafile separator "\t"
set title "Hostel / peer (lower is better), medians, TCG"
set style fill solid 0.6
set boxwidth 0.6
set yrange [0:*]
set offsets 0.3, 0.3, 0.12, 0
set xtics rotate by -25 noenhanced
set grid ytics
set arrow from graph 0, first 1 to graph 1, first 1 nohead dt 2 lc rgb "red"
unset key
plot data using 0:2:xtic(1) with boxes lc rgb "#3366aa", \
     data using 0:2:(sprintf("%.3f", $2)) with labels offset 0,0.8
