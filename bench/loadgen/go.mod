module xcloud/bench/loadgen

go 1.22
