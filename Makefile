.PHONY: demo test bench

demo:  ## set up and run the main job
	hack/demo.sh

test:  ## set up and run the whole test suite
	hack/test.sh

bench:  ## print the benchmark figures
	hack/bench.sh
