from setuptools import find_packages, setup

setup(
    name='cameron',
    version='0.1.0',
    description='A workflow server: trees of HTTP steps run concurrently on gevent, '
                'every step recorded in Redis',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    python_requires='>=3.11',
    packages=find_packages(include=['cameron', 'cameron.*']),
    scripts=['bin/cameron-server'],
    install_requires=[
        'gevent>=23.9',
        'bottle>=0.12.25',
        'redis>=5.0',
        'hiredis>=2.0',  # Redis replies parsed in C rather than in Python
        'pyyaml>=6.0',
        'fakeredis>=2.20',  # the embedded store, used when no Redis URL is configured
    ],
    # pytest-timeout: a test that hangs fails alone instead of stalling the whole run.
    extras_require={'test': ['pytest>=7', 'pytest-timeout>=2.1', 'requests>=2.31']},
)
