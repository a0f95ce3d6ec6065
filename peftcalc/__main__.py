from peftcalc.cli import main

main(prog_name="peftcalc")
