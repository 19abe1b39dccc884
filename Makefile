# paperzoo: the two set-up commands of the README.
#   make demo  - create .venv, install torch 2.13.0 (CPU wheel) and paperzoo, get Fashion-MNIST, run the main job
#   make test  - same install, then the test suite (default suite, then the `slow` checks)
#   make fonts - a Korean font (Debian's fonts-nanum), so Korean labels in pictures are not empty boxes
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
TORCH   ?= torch==2.13.0
# pyproject extras to install; `make install EXTRAS=all,dev` leaves Ray out (its tests then skip)
EXTRAS  ?= all,ray,dev
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FMNIST  := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
FORTUNES := /usr/share/games/fortunes/fortunes
HANGUL  := /usr/share/fonts/truetype/nanum/NanumGothic.ttf

.PHONY: demo test test-fast install data fonts lint clean

install: $(VENV)/.installed fonts

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned, so nothing below can pull a CUDA build
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

# Debian packages: Fashion-MNIST (idx .gz files) and the fortunes corpus for the language model.
data:
	@if [ ! -f $(FMNIST) ] || [ ! -f $(FORTUNES) ]; then \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist fortunes-min; \
	fi

# Debian package: a font with Hangul (matplotlib's DejaVu Sans has none) for the translation pictures;
# paperzoo.viz.common.font_for finds it even when matplotlib cached its font list before it was installed.
fonts:
	@if [ ! -f $(HANGUL) ]; then \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq fonts-nanum; \
	fi

demo: install data
	$(BIN)/paperzoo demo

test: install data
	$(BIN)/python -m pytest -q -n 2 -m "not slow"
	$(BIN)/python -m pytest -q -n 2 -m slow || [ $$? -eq 5 ]

test-fast: install data
	$(BIN)/python -m pytest -q -n 2 -m "not slow"

lint: install
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
