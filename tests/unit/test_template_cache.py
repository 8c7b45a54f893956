"""The bake's compiled-template cache (ceil.features.template_bytecode_cache): used between runs,
recompiled when a template changes, and never the reason a bake fails."""

from __future__ import annotations

import shutil

import jinja2

from ceil import features
from ceil.features import _BytecodeCache


def render(templates, cache_dir, template="t.j2", **values) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates)),
                             bytecode_cache=_BytecodeCache(str(cache_dir)))
    return env.get_template(template).render(**values)


def test_a_second_run_loads_what_the_first_compiled_and_an_edit_compiles_again(tmp_path, monkeypatch):
    templates, cache = tmp_path / "t", tmp_path / "cache"
    templates.mkdir(), cache.mkdir()
    (templates / "t.j2").write_text("hello {{ name }}")
    assert render(templates, cache, name="pi") == "hello pi"
    assert len(list(cache.iterdir())) == 1
    compiled = []
    compile_source = jinja2.Environment.compile

    def counting_compile(self, *args, **kwargs):
        compiled.append(1)
        return compile_source(self, *args, **kwargs)

    monkeypatch.setattr(jinja2.Environment, "compile", counting_compile)
    assert render(templates, cache, name="pi") == "hello pi"
    assert compiled == []  # from the cache
    (templates / "t.j2").write_text("bye {{ name }}")
    assert render(templates, cache, name="pi") == "bye pi"  # never the stale code
    assert compiled == [1]


def test_a_missing_folder_or_a_cut_file_costs_a_compile_not_the_bake(tmp_path):
    templates, cache = tmp_path / "t", tmp_path / "cache"
    templates.mkdir(), cache.mkdir()
    (templates / "t.j2").write_text("x={{ x }}")
    assert render(templates, cache, x=1) == "x=1"
    (entry,) = cache.iterdir()
    entry.write_bytes(entry.read_bytes()[:20])  # a file cut short (a full disk, a crash)
    assert render(templates, cache, x=2) == "x=2"
    shutil.rmtree(cache)  # `rm -rf ~/.cache/ceil` while a bake runs
    assert render(templates, cache, x=3) == "x=3"


def test_the_cache_folder_is_private_and_a_read_only_cache_means_no_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CEIL_CACHE", str(tmp_path / "c"))
    features.template_bytecode_cache.cache_clear()
    try:
        assert isinstance(features.template_bytecode_cache(), _BytecodeCache)
        assert (tmp_path / "c/jinja-escaped").stat().st_mode & 0o777 == 0o700
        features.template_bytecode_cache.cache_clear()
        (tmp_path / "ro").write_text("a file where the cache folder should be")
        monkeypatch.setenv("CEIL_CACHE", str(tmp_path / "ro"))
        assert features.template_bytecode_cache() is None
    finally:
        features.template_bytecode_cache.cache_clear()

