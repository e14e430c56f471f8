from setuptools import find_packages, setup

setup(
    name="ESL",
    version="1.0.0",
    description="Entropy-guided self-supervised learning (ESL) and AdvEnt for "
                "unsupervised domain adaptation in semantic segmentation",
    packages=find_packages(include=["advent", "advent.*"]),
    package_data={
        "advent.dataset": ["*_list/*.txt", "*_list/*.json"],
        "advent.scripts": ["configs/*.yml", "configs/*/*.yml"],
    },
    python_requires=">=3.9",
    # Upper bounds keep pip on the releases this project is tested with
    # (torch 2.14.1 / torchvision 0.29.1) instead of fetching a newer CUDA build.
    install_requires=[
        "torch>=2.1,<2.15",
        "torchvision>=0.16,<0.30",
        "numpy>=1.23",
        "opencv-python-headless>=4.5",
        "pyyaml>=5.1",
        "tensorboardX>=2.4",
        "tqdm>=4.40",
        "pillow>=9.0",
    ],
    extras_require={"dev": ["pytest>=7", "cityscapesscripts>=2.2"]},
)
