# Set-up without a ROS install: a local .venv with the PyPI ROS 2 Kilted wheels.
# In a ROS 2 workspace use colcon instead (see README).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
DEMO_OUT ?= out/demo
PY := $(VENV)/bin/python
STAMP := $(VENV)/.prism_ros_installed

.PHONY: all venv demo test clean-venv

all: test

venv: $(STAMP)

$(STAMP): setup.py Makefile tools/build_tf2_msgs.py tools/tf2_msgs/CMakeLists.txt tools/tf2_msgs/msg/TFMessage.msg
	@echo "==> system library libusb-1.0 (Open3D needs it)"
	@if ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then echo "    present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "    installing libusb-1.0-0 with apt-get"; \
	  (apt-get install -y -qq libusb-1.0-0 >/dev/null 2>&1 || \
	   (apt-get update -qq >/dev/null && apt-get install -y -qq libusb-1.0-0 >/dev/null)) \
	  && echo "    installed" || echo "    could not install; mesh export via Open3D will be unavailable"; \
	else echo "    missing and not installable here (need root + apt); mesh export via Open3D will be unavailable"; fi
	@if [ ! -x $(PY) ]; then echo "==> creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); \
	else echo "==> $(VENV) exists"; fi
	@if $(PY) -c "import torch" 2>/dev/null; then \
	  echo "==> torch $$($(PY) -c 'import torch; print(torch.__version__)') already installed, keeping it"; \
	else echo "==> installing $(TORCH)"; $(PY) -m pip install -q --disable-pip-version-check "$(TORCH)"; fi
	@echo "==> installing prism_ros (editable) with the ROS 2 Kilted wheels, Open3D and test tools"
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[ros,mesh,test]'
	@echo "==> tf2_msgs (no PyPI wheel): built from its message definition with the wheels' rosidl generators"
	@$(PY) tools/build_tf2_msgs.py --venv $(VENV) || echo "    WARNING: tf2_msgs could not be built (see above): the nodes run without TF and the TF tests skip"
	@touch $(STAMP)
	@echo "==> environment ready: $(VENV)"

demo: venv
	@echo "==> prism-ros demo (output in $(DEMO_OUT))"
	@$(VENV)/bin/prism-ros demo --out $(DEMO_OUT)

test: venv
	@echo "==> pytest"
	@$(PY) -m pytest -q test --durations=25

clean-venv:
	rm -rf $(VENV)
