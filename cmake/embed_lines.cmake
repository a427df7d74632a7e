# embed_lines.cmake - turn a text file of names, one a line, into a C array at build time:
#   cmake -DIN=data/imagenet1k.txt -DOUT=imagenet1k.c -DNAME=cli_imagenet1k -P embed_lines.cmake
# defines `const char *const NAME[]` and `const size_t NAME_count`. Backslashes and double
# quotes are escaped, so any line is a valid C string.
file(STRINGS "${IN}" lines ENCODING UTF-8)
set(body "")
set(n 0)
foreach(line IN LISTS lines)
  string(REPLACE "\\" "\\\\" line "${line}")
  string(REPLACE "\"" "\\\"" line "${line}")
  string(APPEND body "    \"${line}\",\n")
  math(EXPR n "${n} + 1")
endforeach()
file(WRITE "${OUT}"
  "/* Generated from ${IN} by cmake/embed_lines.cmake; do not edit. */\n"
  "#include <stddef.h>\n"
  "extern const char *const ${NAME}[];\n"
  "extern const size_t ${NAME}_count;\n"
  "const char *const ${NAME}[] = {\n${body}};\n"
  "const size_t ${NAME}_count = ${n};\n")

