# Evaluate a Puppetfile read from stdin and print its declarations as JSON.
#
# Run by gitstate.engine.puppetfile_ruby when deploy.puppetfile_ruby is on
# and gitstate's own parser cannot read a Puppetfile (it uses Ruby: a def,
# variables, string building). The text is evaluated as r10k evaluates it
# (instance_eval on an object whose methods are the Puppetfile DSL of
# R10K::ModuleLoader::Puppetfile::DSL), but nothing is installed: each call is
# recorded with its line and printed, and gitstate validates the result as it
# validates what it parses itself (URLs, install paths, names, versions).
#
# Output, one JSON object on stdout:
#   {"statements": [{"call": "mod", "args": [...], "kwargs": {...}, "line": 3}, ...]}
#   {"error": "unrecognized declaration 'foo'", "line": 2}
# Symbols are written ":name", numbers as strings, nil as null.
#
# Not a security boundary on its own: gitstate runs this without network
# (unshare -n where it can), with the Puppetfile on stdin, cwd and HOME an
# empty temporary directory, no file writes (RLIMIT_FSIZE 0), limits on
# memory and CPU and a time limit. The stubs below only make the usual ways
# out (sockets, subprocesses) fail early and legibly.

require 'json'

# Limits first: argv is [memory bytes, cpu seconds]; no file may be written.
memory, cpu = ARGV.map(&:to_i)
Process.setrlimit(:AS, memory) if memory.to_i.positive?
Process.setrlimit(:CPU, cpu) if cpu.to_i.positive?
Process.setrlimit(:FSIZE, 0)
Process.setrlimit(:CORE, 0)

text = $stdin.read.to_s.dup.force_encoding('UTF-8')
text = text.sub(/\A\uFEFF/, '')
$stdin.close

# -- make the usual ways out fail ------------------------------------------------------

%i[Socket BasicSocket IPSocket TCPSocket TCPServer UDPSocket UNIXSocket UNIXServer].each do |name|
  Object.send(:remove_const, name) if Object.const_defined?(name)
end

module GitstateNoExit
  REFUSED = %w[socket net/http net/https net/ftp open-uri open3 resolv fileutils].freeze

  def require(name)
    raise LoadError, "require '#{name}' is not allowed in a Puppetfile evaluated by gitstate" if REFUSED.include?(name.to_s)

    super
  end

  %i[system exec spawn fork ` syscall open].each do |name|
    define_method(name) do |*_args, **_opts|
      raise NotImplementedError, "#{name} is not allowed in a Puppetfile evaluated by gitstate"
    end
  end
end
Object.prepend(GitstateNoExit)
class << IO
  %i[popen sysopen].each do |name|
    define_method(name) { |*_args, **_opts| raise NotImplementedError, "IO.#{name} is not allowed" }
  end
end
class << File
  %i[delete unlink rename chmod chown lchmod lchown link symlink truncate write binwrite
     utime mkfifo].each do |name|
    define_method(name) { |*_args, **_opts| raise NotImplementedError, "File.#{name} is not allowed" }
  end

  # Reading is allowed; opening for writing is not (a mode other than r/rb).
  %i[open new].each do |name|
    original = instance_method(name)
    define_method(name) do |path, mode = 'r', *rest, **opts, &block|
      unless [nil, 'r', 'rb', 'rt', 'r:UTF-8', 'rb:UTF-8'].include?(mode) && opts[:mode].nil?
        raise NotImplementedError, "File.#{name} for writing is not allowed"
      end

      original.bind(self).call(path, 'r', *rest, **opts, &block)
    end
  end
end
class << Dir
  %i[mkdir rmdir delete unlink chdir chroot].each do |name|
    define_method(name) { |*_args, **_opts| raise NotImplementedError, "Dir.#{name} is not allowed" }
  end
end
module Process
  class << self
    %i[spawn fork exec].each do |name|
      define_method(name) { |*_args, **_opts| raise NotImplementedError, "Process.#{name} is not allowed" }
    end
  end
end

# -- the DSL -------------------------------------------------------------------------

class GitstatePuppetfileError < StandardError
  attr_reader :line

  def initialize(message, line)
    super(message)
    @line = line
  end
end

def gitstate_value(value, line)
  case value
  when String, true, false, nil then value
  when Symbol then ":#{value}"
  when Integer, Float then value.to_s
  when Hash
    value.each_with_object({}) do |(key, item), out|
      out[key.is_a?(Symbol) ? key.to_s : gitstate_value(key, line)] = gitstate_value(item, line)
    end
  else
    raise GitstatePuppetfileError.new("unsupported value #{value.inspect} (#{value.class})", line)
  end
end

class GitstatePuppetfileDSL
  attr_reader :statements

  def initialize
    @statements = []
  end

  def mod(*args)
    record('mod', args)
  end

  def forge(*args)
    record('forge', args)
  end

  def moduledir(*args)
    record('moduledir', args)
  end

  def exclusion(*args)
    record('exclusion', args)
  end

  def method_missing(method, *_args)
    raise NoMethodError, "unrecognized declaration '#{method}'"
  end

  def respond_to_missing?(*)
    false
  end

  private

  def record(call, args)
    line = caller_locations.find { |loc| loc.path == 'Puppetfile' }&.lineno
    kwargs = {}
    kwargs = args.pop if args.last.is_a?(Hash) && args.length > 1
    @statements << {
      'call' => call,
      'args' => args.map { |arg| gitstate_value(arg, line) },
      'kwargs' => gitstate_value(kwargs, line),
      'line' => line,
    }
  end
end

def gitstate_line(error)
  (error.backtrace_locations || []).find { |loc| loc.path == 'Puppetfile' }&.lineno
end

dsl = GitstatePuppetfileDSL.new
begin
  dsl.instance_eval(text, 'Puppetfile', 1)
  $stdout.write(JSON.generate({ 'statements' => dsl.statements }))
rescue GitstatePuppetfileError => e
  $stdout.write(JSON.generate({ 'error' => e.message, 'line' => e.line }))
rescue ScriptError, StandardError => e
  line = gitstate_line(e)
  line ||= e.message[/\APuppetfile:(\d+):/, 1]&.to_i if e.is_a?(SyntaxError)
  message = e.message.sub(/\APuppetfile:\d+: /, '').lines.first.to_s.strip
  $stdout.write(JSON.generate({ 'error' => message, 'line' => line }))
end
