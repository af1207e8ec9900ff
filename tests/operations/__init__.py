"""Operations: crashes, races, startup, migrations, the deployment files, the README and the
examples, the golden generators."""
